from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from dctp_tasks.pii import ALL, card_valid, iban_valid, redact_pii
from dctp_tasks.quality.base import ScoringContext
from dctp_tasks.quality.pii import PiiConfig, PiiScorer
from tests.conftest import make_table

# (text, redacted text, kind): card and IBAN numbers are the issuers' published test numbers, phones use 555 exchanges.
POSITIVES = [
    ("Mail john.doe@example.com now", "Mail <EMAIL> now", "email"),
    ("x: Jane_Smith+news@mail.example.co.uk.", "x: <EMAIL>.", "email"),
    ("<a@b.io>", "<<EMAIL>>", "email"),
    ("Call (415) 555-2671 today", "Call <PHONE> today", "phone"),
    ("Call 415-555-2671.", "Call <PHONE>.", "phone"),
    ("fax 415.555.2671", "fax <PHONE>", "phone"),
    ("tel +1 415 555 2671", "tel <PHONE>", "phone"),
    ("+1-415-555-2671", "<PHONE>", "phone"),
    ("free: 1-800-555-0199", "free: <PHONE>", "phone"),
    ("London +44 20 7946 0958", "London <PHONE>", "phone"),
    ("Berlin +49 30 901820", "Berlin <PHONE>", "phone"),
    ("Paris +33 1 42 68 53 00", "Paris <PHONE>", "phone"),
    ("Tokyo +81-3-1234-5678", "Tokyo <PHONE>", "phone"),
    ("Delhi +91 98765 43210", "Delhi <PHONE>", "phone"),
    ("E.164 +14155552671", "E.164 <PHONE>", "phone"),
    ("+1 (415) 555-2671", "<PHONE>", "phone"),
    ("server 192.168.1.1.", "server <IP_ADDRESS>.", "ip_address"),
    ("ip=10.0.0.255 ok", "ip=<IP_ADDRESS> ok", "ip_address"),
    ("2001:0db8:85a3:0000:0000:8a2e:0370:7334", "<IP_ADDRESS>", "ip_address"),
    ("use 2001:db8::8a2e:370:7334 here", "use <IP_ADDRESS> here", "ip_address"),
    ("loopback ::1.", "loopback <IP_ADDRESS>.", "ip_address"),
    ("mapped ::ffff:192.0.2.128", "mapped <IP_ADDRESS>", "ip_address"),
    ("card 4111 1111 1111 1111", "card <CREDIT_CARD>", "credit_card"),
    ("card 4111-1111-1111-1111", "card <CREDIT_CARD>", "credit_card"),
    ("MC 5555555555554444.", "MC <CREDIT_CARD>.", "credit_card"),
    ("Amex 3782 822463 10005", "Amex <CREDIT_CARD>", "credit_card"),
    ("Amex 371449635398431", "Amex <CREDIT_CARD>", "credit_card"),
    ("Discover 6011 1111 1111 1117", "Discover <CREDIT_CARD>", "credit_card"),
    ("JCB 3530111333300000", "JCB <CREDIT_CARD>", "credit_card"),
    ("IBAN DE89 3704 0044 0532 0130 00 Thanks", "IBAN <IBAN> Thanks", "iban"),
    ("to GB82WEST12345698765432", "to <IBAN>", "iban"),
    ("FR14 2004 1010 0505 0001 3M02 606", "<IBAN>", "iban"),
    ("NL91ABNA0417164300.", "<IBAN>.", "iban"),
    ("IBAN: CH93 0076 2011 6238 5295 7", "IBAN: <IBAN>", "iban"),
    ("SSN 123-45-6789", "SSN <SSN>", "ssn"),
    ("ssn: 123456789", "ssn: <SSN>", "ssn"),
    ("Social Security Number 536 22 8726", "Social Security Number <SSN>", "ssn"),
    ("my number is 219-09-9999", "my number is <SSN>", "ssn"),
]

# Must stay as they are. A dotted quad right after "v", "version", "release", "section" … is a version or section
# number, not an address; without such a word it is an address.
TRAPS = [
    "2024-01-15", "01/15/2024", "15.01.2024", "at 12:30:45 or 9:15 pm", "John 3:16", "ratio 1:2:3",
    "v1.2.3", "v1.2.3.4", "2.10.4", "version 1.2.3.4", "Version: 10.0.0.1", "release 4.4.0.1", "section 1.2.3.4",
    "Python 3.11.4", "ISBN 978-3-16-148410-0", "ISBN 0-306-40615-2", "ISBN 9783161484100", "Order #123456789",
    "invoice 2024-000123", "tracking 9400 1000 0000 0000 0000 00", "UPS 1Z999AA10123456784", "$1,234.56 and €99.99",
    "in 1999 and 2024", "ZIP 94103-1234", "ZIP 10001", "1,000,000 people", "pi 3.14159265358979",
    "4111 1111 1111 1112",  # fails Luhn
    "7111 1111 1111 1114",  # passes Luhn, no card brand starts with 7
    "2024-01-15 2024-01-16",  # 16 digits, but not a card layout
    "DE89 3704 0044 0532 0130 01", "GB82WEST12345698765431",  # wrong IBAN checksum
    "XX89 3704 0044 0532 0130 00",  # no such country
    "000-12-3456", "666-12-3456", "912-34-5678", "123-00-4567", "123-45-0000",  # SSNs never issued
    "std::vector<int> a::b", "MAC 00:1A:2B:3C:4D:5E", "256.1.1.1", "1.02.3.4", "call 555-1234", "5551234567",
    "123-456-7890",  # area code 1xx does not exist
    "score +3.5", "Temperatures +20 to +25", "UUID 123e4567-e89b-12d3-a456-426614174000", "user@localhost",
]


@pytest.mark.parametrize(("text", "expected", "kind"), POSITIVES)
def test_redacts_each_format(text, expected, kind):
    redacted, counts = redact_pii(pa.array([text]))
    assert redacted.to_pylist() == [expected]
    assert {k: int(v[0]) for k, v in counts.items() if v[0]} == {kind: 1}


@pytest.mark.parametrize("text", TRAPS)
def test_false_positive_traps_are_left_alone(text):
    redacted, counts = redact_pii(pa.array([text]))
    assert redacted.to_pylist() == [text]
    assert all(int(v[0]) == 0 for v in counts.values())


def test_mixed_document_counts_every_kind():
    text = ("Reach jane@corp.example or +44 20 7946 0958 (office) and 415-555-2671; VPN 10.1.2.3, "
            "card 4111 1111 1111 1111 exp 2027-01-31, IBAN GB82 WEST 1234 5698 7654 32, SSN 123-45-6789, v2.1.0.4.")
    redacted, counts = redact_pii(pa.array([text]))
    assert redacted.to_pylist() == [
        "Reach <EMAIL> or <PHONE> (office) and <PHONE>; VPN <IP_ADDRESS>, card <CREDIT_CARD> exp 2027-01-31, "
        "IBAN <IBAN>, SSN <SSN>, v2.1.0.4."]
    assert {k: int(v[0]) for k, v in counts.items()} == {
        "email": 1, "phone": 2, "ip_address": 1, "credit_card": 1, "iban": 1, "ssn": 1}


def test_nulls_and_empty_strings():
    redacted, counts = redact_pii(pa.array([None, "", "a@b.io", None]))
    assert redacted.to_pylist() == [None, "", "<EMAIL>", None]
    assert counts["email"].tolist() == [0, 0, 1, 0]
    empty, counts = redact_pii(pa.array([], pa.string()))
    assert len(empty) == 0 and all(len(v) == 0 for v in counts.values())


def test_only_the_configured_types_are_redacted_and_a_card_is_never_a_phone():
    text = "card 4111 1111 1111 1111, call 415-555-2671, mail a@b.io"
    redacted, counts = redact_pii(pa.array([text]), ["phone"])
    assert redacted.to_pylist() == ["card 4111 1111 1111 1111, call <PHONE>, mail a@b.io"]
    assert {k: int(v[0]) for k, v in counts.items()} == {k: int(k == "phone") for k in ALL}
    with pytest.raises(ValueError, match="passport"):
        redact_pii(pa.array([text]), ["passport"])


def test_batch_equals_row_by_row():
    texts = [p[0] for p in POSITIVES] + TRAPS + [None, ""]
    texts += [" ".join(t for t in texts[i::7] if t) for i in range(7)]
    batch, batch_counts = redact_pii(pa.chunked_array([texts[:30], texts[30:]]))
    for i, text in enumerate(texts):
        one, one_counts = redact_pii(pa.array([text], pa.string()))
        assert batch[i].as_py() == one[0].as_py()
        assert {k: int(v[i]) for k, v in batch_counts.items()} == {k: int(v[0]) for k, v in one_counts.items()}


def test_scorer_counts_configured_types_and_rule_is_off_by_default(tmp_path):
    table = make_table(["a@b.io and c@d.org, call 415-555-2671", "nothing here", None])
    scorer = PiiScorer(PiiConfig(types=["email", "ssn"]))
    scorer.prepare(ScoringContext(storage=None, dt="2026-01-01"))
    scores = scorer.score(table.to_batches()[0])
    assert scores["email"].tolist() == [2, 0, 0]
    assert scores["phone"].tolist() == [0, 0, 0]  # not configured
    assert scores["total"].tolist() == [2, 0, 0]
    struct = scorer.to_struct(scores)
    assert struct.type == scorer.struct_type() and struct.type.field("total").type == pa.int32()
    (rule,) = scorer.rules
    assert rule.name == "too_much_pii" and rule.threshold is None
    assert not rule.fails(scores["total"]).any()
    assert rule.fails(scores["total"], 1).tolist() == [True, False, False]
    assert scorer.quality(scores, np.array([None] * 3)) is None
    assert PiiConfig().redact is True and PiiConfig().types == list(ALL)


@pytest.mark.parametrize(("number", "valid"), [
    ("4111111111111111", True), ("4111111111111112", False), ("378282246310005", True), ("1234567812345670", False)])
def test_card_valid(number, valid):
    assert card_valid(number) is valid


@pytest.mark.parametrize(("iban", "valid"), [
    ("DE89370400440532013000", True), ("DE89370400440532013001", False), ("DE8937040044053201300", False),
    ("NO9386011117947", True), ("ZZ89370400440532013000", False)])
def test_iban_valid(iban, valid):
    assert iban_valid(iban) is valid
