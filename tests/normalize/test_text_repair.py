"""The ftfy pre-filter is a superset: repairing only the candidate rows equals running ftfy on every row."""

from __future__ import annotations

import random

import ftfy
import pyarrow as pa
import pytest

from dctp_tasks.normalize import text_repair

BROKEN = [
    "âœ” No problems",
    "&macr;\\_(ã\x83\x84)_/&macr;",
    "Broken text&hellip; it&#x2019;s ﬂubberiﬁc!",
    "ＬＯＵＤ　ＮＯＩＳＥＳ",
    "sÃ³",
    "voilÃ le travail",
    "cafÃ©",
    "Ã¼ber",
    "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.",
    "Ð¿Ñ€Ð¸Ð²ÐµÑ‚",
    "l’humanitÃ©",
    "ГўВЂВњquoteГўВЂВќ",
    "tab\x1b[36mcolour\x1b[0m",
    "line\u2028break",
]
CLEAN = ["naïve café", "Straße in München", "plain ASCII text", "日本語のテキスト", "emoji 🎉 ok", "“quoted” text"]


@pytest.mark.parametrize("text", BROKEN)
def test_every_text_ftfy_changes_is_a_candidate(text):
    fixer = ftfy.TextFixerConfig(uncurl_quotes=False, explain=False)
    assert ftfy.fix_text(text, fixer) != text  # the sample really is broken
    assert text_repair.candidates(pa.array([text]))[0]


@pytest.mark.parametrize("text", CLEAN)
def test_clean_text_is_left_alone(text):
    assert not text_repair.candidates(pa.array([text]))[0]
    assert text_repair.repair(pa.array([text])).to_pylist() == [text]


def test_curly_quotes_are_candidates_only_when_uncurling():
    texts = pa.array(["“quoted” text"])
    assert not text_repair.candidates(texts, uncurl_quotes=False)[0]
    assert text_repair.candidates(texts, uncurl_quotes=True)[0]
    assert text_repair.repair(texts, uncurl_quotes=True).to_pylist() == ['"quoted" text']


def test_repair_equals_ftfy_on_every_row_of_a_mixed_batch():
    rng = random.Random(3)
    texts = [rng.choice(BROKEN + CLEAN) + " " + rng.choice(CLEAN) for _ in range(400)]
    fixer = ftfy.TextFixerConfig(uncurl_quotes=False, explain=False)
    assert text_repair.repair(pa.array(texts)).to_pylist() == [ftfy.fix_text(t, fixer) for t in texts]


def test_untranslatable_pattern_falls_back_to_every_non_ascii_row(monkeypatch):
    monkeypatch.setattr(text_repair, "_badness_re2", lambda: None)
    marks = text_repair.candidates(pa.array(["naïve café", "plain", "cafÃ©"]))
    assert marks.tolist() == [True, False, True]
