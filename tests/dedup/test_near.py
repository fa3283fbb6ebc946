from __future__ import annotations

import csv
import random
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from dctp_tasks.config import load_config
from dctp_tasks.dedup.minhash import shingles
from dctp_tasks.dedup.near import STATE, _match_sorted, dedup_near_day
from dctp_tasks.publish import resolve
from dctp_tasks.storage import Storage, state_dir
from tests.conftest import IN_CI, SHARED_DATA, stage_dedup_input, staged
from tests.conftest import rejects as staged_drops

DAG = "dag"
D1, D2, D3 = "2026-03-01", "2026-03-02", "2026-03-03"
VOCAB = [f"w{i}" for i in range(3000)]


def passage(seed: int, words: int = 150) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(words))


def edited(text: str, positions: tuple[int, ...] = (30, 110)) -> str:
    """Replace a few far-apart words: 5-gram Jaccard about 0.87 for 150 words and two edits."""
    words = text.split()
    for i in positions:
        words[i] = "EDITED"
    return " ".join(words)


@pytest.fixture
def storage(tmp_path) -> Storage:
    return Storage(f"file://{tmp_path}")


def ts(hour: int) -> datetime:
    return datetime(2026, 3, 1, hour, tzinfo=UTC)


def stage(storage: Storage, dt: str, rows: list[tuple]) -> None:
    """Write the date's ``dedup_exact`` output: rows of ``(doc_id, text[, created_at[, domain]])``."""
    stage_dedup_input(storage, DAG, dt, "dedup_exact", rows)


def run(storage: Storage, dt: str, **overrides):
    return dedup_near_day(storage, load_config(overrides=overrides or None), DAG, dt)


def kept_ids(storage: Storage, dt: str) -> list[str]:
    return sorted(staged(storage, DAG, dt, "dedup_near").column("doc_id").to_pylist())


def dup_pairs(storage: Storage, dt: str) -> dict[str, str]:
    return {r["doc_id"]: r["duplicate_of"] for r in staged_drops(storage, DAG, dt).to_pylist()}


def test_near_duplicates_are_caught_and_unrelated_passages_kept(storage):
    a, b = passage(1), passage(2)
    stage(storage, D1, [("w/a", a, ts(1)), ("w/a2", edited(a), ts(2)), ("w/a3", edited(a, (5, 70, 140)), ts(3)),
                        ("w/b", b, ts(4))] + [(f"w/u{i}", passage(100 + i), ts(5)) for i in range(20)])

    result = run(storage, D1)

    assert dup_pairs(storage, D1) == {"w/a2": "w/a", "w/a3": "w/a"}
    assert (result.total, result.kept, result.dropped) == (24, 22, 2)
    assert result.dropped_by_reason == {"near_duplicate": 2}
    assert (result.extra["lsh_bands"], result.extra["lsh_rows"]) == (14, 8)
    rejects = staged_drops(storage, DAG, D1).to_pylist()
    assert {r["outcome"] for r in rejects} == {"duplicate"} and {r["stage"] for r in rejects} == {"dedup_near"}
    assert all(r["detail"].startswith("minhash jaccard≈") and r["detail"].endswith("(same day)") for r in rejects)
    # The day's survivors become history: signatures and one row per band.
    assert storage.count_rows(resolve(storage, state_dir(STATE, D1)), "signatures") == 22
    assert storage.count_rows(resolve(storage, state_dir(STATE, D1)), "bands") == 22 * 14


@pytest.mark.parametrize(("rows", "survivor"), [
    pytest.param([("w/a", 0, ts(10)), ("w/b", 1, ts(9)), ("w/c", 2, ts(11))], "w/b", id="earliest_created_at"),
    pytest.param([("w/z", 0, ts(9)), ("w/m", 1, ts(9)), ("w/q", 2, ts(9))], "w/m", id="tie_then_smallest_doc_id"),
    pytest.param([("w/a", 0, None), ("w/b", 1, ts(23))], "w/b", id="undated_loses_to_dated"),
])
def test_within_a_day_the_earliest_row_survives(storage, rows, survivor):
    base = passage(7)
    variants = [base, edited(base), edited(base, (60,))]
    stage(storage, D1, [(doc, variants[v], when) for doc, v, when in rows])

    run(storage, D1)

    assert kept_ids(storage, D1) == [survivor]
    assert dup_pairs(storage, D1) == {r[0]: survivor for r in rows if r[0] != survivor}


def test_longest_survives_when_configured(storage):
    base = passage(8)
    stage(storage, D1, [("w/a", base, ts(1)), ("w/b", base + " and a longer tail", ts(2))])

    run(storage, D1, **{"dedup_near.survivor": "longest"})

    assert dup_pairs(storage, D1) == {"w/a": "w/b"}


def test_history_beats_today_and_reruns_in_any_order_agree(storage):
    a, b, c = passage(11), passage(12), passage(13)
    days = {
        D1: [("w/a1", a, ts(5)), ("w/b1", b, ts(5))],
        D2: [("w/a2", edited(a), ts(1)), ("w/c2", c, ts(9))],  # a2 is earlier in its day, but a1 is history
        D3: [("w/a3", edited(a, (20,)), ts(1)), ("w/c3", edited(c), ts(1)), ("w/n3", passage(14), ts(1))],
    }
    for dt, rows in days.items():
        stage(storage, dt, rows)
        run(storage, dt)
    first = {dt: (kept_ids(storage, dt), dup_pairs(storage, dt)) for dt in days}

    assert first[D2] == (["w/c2"], {"w/a2": "w/a1"})
    assert first[D3] == (["w/n3"], {"w/a3": "w/a1", "w/c3": "w/c2"})
    detail = {r["doc_id"]: r["detail"] for r in staged_drops(storage, DAG, D3).to_pylist()}
    assert detail["w/c3"].endswith(f"(history dt={D2})") and detail["w/a3"].endswith(f"(history dt={D1})")
    assert run(storage, D3).extra["duplicates_of_history"] == 2

    for dt in reversed(list(days)):
        run(storage, dt)
    assert {dt: (kept_ids(storage, dt), dup_pairs(storage, dt)) for dt in days} == first


@pytest.mark.parametrize(("domains", "domain_thresholds", "merged"), [
    pytest.param(("news", "news"), {}, True, id="default_threshold"),
    pytest.param(("news", "news"), {"news": 0.9}, False, id="stricter_domain"),
    pytest.param(("news", "forum"), {"forum": 0.9}, False, id="stricter_of_the_two_docs"),
    pytest.param(("news", "news"), {"forum": 0.9}, True, id="other_domain_untouched"),
    pytest.param(("news", "news"), {"news": 0.6}, True, id="looser_domain"),
])
def test_domain_thresholds_judge_a_pair_by_its_stricter_doc(storage, domains, domain_thresholds, merged):
    a, a2 = passage(21), edited(passage(21), (30, 70, 110))
    stage(storage, D1, [("w/a", a, ts(1), domains[0]), ("w/a2", a2, ts(2), domains[1])])

    result = run(storage, D1, **{"dedup_near.domain_thresholds": domain_thresholds})

    assert dup_pairs(storage, D1) == ({"w/a2": "w/a"} if merged else {})
    assert (result.extra["lsh_bands"], result.extra["lsh_rows"]) == (14, 8)  # banding follows the global threshold
    if merged:
        detail = staged_drops(storage, DAG, D1).column("detail")[0].as_py()
        assert detail.startswith("minhash jaccard≈") and detail.endswith(" (same day)")
        assert abs(float(detail.split("≈")[1].split()[0]) - jaccard(a, a2)) < 0.1  # true Jaccard ≈ 0.81


def test_history_docs_keep_their_domain_threshold(storage):
    a = passage(22)
    stage(storage, D1, [("w/a", a, ts(1), "news")])
    stage(storage, D2, [("w/a2", edited(a, (30, 70, 110)), ts(1))])
    strict = {"dedup_near.domain_thresholds": {"news": 0.9}}

    run(storage, D1, **strict)
    run(storage, D2, **strict)

    assert kept_ids(storage, D2) == ["w/a2"]
    signatures = storage.read_table(resolve(storage, state_dir(STATE, D1)), "signatures")
    assert signatures.column("domain").to_pylist() == ["news"]


@pytest.mark.parametrize("value", [0.0, 1.5])
def test_domain_threshold_out_of_range_is_refused(value):
    with pytest.raises(ValueError, match="dedup_near.domain_thresholds"):
        load_config(overrides={"dedup_near.domain_thresholds": {"news": value}})


def test_history_with_other_signature_width_is_refused(storage):
    stage(storage, D1, [("w/a", passage(1), ts(1))])
    stage(storage, D2, [("w/a2", passage(1), ts(1))])
    run(storage, D1, **{"dedup_near.num_perm": 64})
    with pytest.raises(ValueError, match="num_perm=112"):
        run(storage, D2)


def test_history_in_the_older_bands_layout_is_refused(storage):
    stage(storage, D1, [("w/a", passage(1), ts(1))])
    stage(storage, D2, [("w/a2", passage(1), ts(1))])
    run(storage, D1)
    old = pa.schema([("doc_id", pa.string()), ("band", pa.int16()), ("band_hash", pa.uint64())])
    with storage.writer(resolve(storage, state_dir(STATE, D1)), "bands", schema=old) as writer:
        writer.write(pa.table({"doc_id": ["w/a"], "band": [0], "band_hash": [1]}, schema=old))
    with pytest.raises(ValueError, match="older layout; re-run dedup_near for 2026-03-01"):
        run(storage, D2)


def test_history_state_stores_each_id_once_and_bands_sorted_by_hash(storage):
    stage(storage, D1, [(f"w/{i}", passage(i), ts(1)) for i in range(20)])
    run(storage, D1)
    signatures = storage.read_table(resolve(storage, state_dir(STATE, D1)), "signatures")
    bands = storage.read_table(resolve(storage, state_dir(STATE, D1)), "bands")
    assert bands.schema.names == ["band_hash", "doc"]
    hashes = bands.column("band_hash").to_numpy()
    assert (np.diff(hashes.astype(np.float64)) >= 0).all() and len(np.unique(hashes)) == len(hashes)
    assert np.bincount(bands.column("doc").to_numpy()).tolist() == [14] * signatures.num_rows == [14] * 20


def test_match_sorted_finds_every_history_row_of_a_wanted_hash():
    hashes = np.array([3, 5, 5, 9, 12, 12, 12, 40], dtype=np.uint64)
    docs = np.arange(8, dtype=np.uint32)
    wanted = np.array([1, 5, 12, 40, 99], dtype=np.uint64)
    found_hashes, found_docs = _match_sorted(wanted, hashes, docs)
    assert found_hashes.tolist() == [5, 5, 12, 12, 12, 40]
    assert found_docs.tolist() == [1, 2, 4, 5, 6, 7]
    shuffled = np.array([7, 0, 3, 5, 1, 6, 2, 4])  # an unsorted batch is still matched
    assert sorted(_match_sorted(wanted, hashes[shuffled], docs[shuffled])[1].tolist()) == [1, 2, 4, 5, 6, 7]
    assert _match_sorted(np.array([4, 10], np.uint64), hashes, docs)[1].tolist() == []
    assert _match_sorted(np.array([], np.uint64), hashes, docs)[1].tolist() == []


def test_empty_and_wordless_texts_pass_through(storage):
    stage(storage, D1, [("w/a", "...", ts(1)), ("w/b", "!!!", ts(1)), ("w/c", passage(3), ts(1))])

    result = run(storage, D1)

    assert (result.total, result.kept) == (3, 3)
    assert storage.count_rows(resolve(storage, state_dir(STATE, D1)), "signatures") == 1


def test_boolq_passages_and_edited_copies(storage):
    path = SHARED_DATA / "boolq_wikipedia" / "boolq_validation.csv"
    if not path.is_file():
        if IN_CI:
            pytest.fail(f"{path} missing (CI=true: real data must be present)")
        pytest.skip(f"BoolQ passages not found at {path}")
    with path.open(newline="") as handle:
        passages = list(dict.fromkeys(r["passage"] for r in csv.DictReader(handle)))
    passages = [p for p in passages if len(p.split()) >= 80][:300]
    rows = [(f"b/{i:04d}", p, ts(1)) for i, p in enumerate(passages)]
    rows += [(f"e/{i:04d}", edited(p, (10,)).upper() + "\n\nShare this article.", ts(2))
             for i, p in enumerate(passages[:50])]
    stage(storage, D1, rows)

    run(storage, D1)

    pairs = dup_pairs(storage, D1)
    true_jaccard = [jaccard(rows[300 + i][1], passages[i]) for i in range(50)]
    high = [i for i in range(50) if true_jaccard[i] >= 0.8]
    caught = [i for i in high if pairs.get(f"e/{i:04d}") == f"b/{i:04d}"]
    assert len(high) >= 40 and len(caught) >= 0.95 * len(high)
    assert set(pairs) <= {f"e/{i:04d}" for i in range(50)}  # distinct passages are never merged
    assert all(pairs[k] == "b/" + k[2:] for k in pairs)


def jaccard(x: str, y: str) -> float:
    a, b = set(shingles(x, 5)), set(shingles(y, 5))
    return len(a & b) / len(a | b)
