"""Heuristic scorer: every rule trips on a document made to trip it, exact statistics, batch = one at a time."""

from __future__ import annotations

import csv
import re
from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from dctp_tasks.quality.heuristics import PAGE_SHAPE_FIELDS, HeuristicsConfig, HeuristicsScorer
from tests.conftest import make_table

GOOD = (
    "The river town grew slowly during the nineteenth century, when traders arrived with salt and timber.\n"
    "Most families farmed the valley floor and sold their grain at a weekly market near the old bridge.\n"
    "A small school opened in 1871, and its first teacher kept a diary that historians still read today.\n"
    "Floods damaged several houses in spring, so the council built a stone wall along the eastern bank.\n"
    "Visitors now come to walk the quiet streets, admire painted shutters and taste bread from local ovens."
)
LINES = GOOD.split("\n")
#: Thresholds for rules that are off by default, so their trip documents are still tested.
TEST_THRESHOLDS = {"too_few_sentences": 5}

TRIPS = {
    "too_few_words": "The cat sat on the mat with the dog.",
    "too_many_words": "word " * 100_001,
    "mean_word_too_short": "to be or it is a go at of the " * 8,
    "mean_word_too_long": "internationalization " * 30 + GOOD[:40],
    "too_many_symbols": GOOD + " #news" * 15,
    "too_many_bullet_lines": "\n".join(f"• {line}" for line in LINES),
    "too_many_ellipsis_lines": "\n".join(line[:-1] + "..." for line in LINES),
    "too_few_alphabetic_words": GOOD + " " + " ".join(str(i) for i in range(400, 1000, 2)),
    "too_few_stop_words": " ".join(w for w in GOOD.split() if w.lower() not in {"the", "and", "to", "of", "with"}),
    "too_many_duplicate_lines": "\n".join(LINES + [LINES[0]] * 3),
    "too_many_duplicate_line_chars": "\n".join(LINES + [LINES[0]] * 3),
    "too_many_duplicate_paragraphs": "\n\n".join(LINES + [LINES[1]] * 3),
    "too_many_duplicate_paragraph_chars": "\n\n".join(LINES + [LINES[1]] * 3),
    "top_2gram_too_frequent": GOOD + " big apple" * 40,
    "top_3gram_too_frequent": GOOD + " big red apple" * 30,
    "top_4gram_too_frequent": GOOD + " one big red apple" * 25,
    **{f"duplicate_{n}grams": GOOD + "\n" + GOOD for n in range(5, 11)},
    "lorem_ipsum": GOOD + "\nLorem Ipsum dolor sit amet.",
    "curly_bracket": GOOD + "\nThe value was {x}.",
    "too_many_javascript_lines": "\n".join(f"Enable JavaScript to view page {i}." for i in range(8)) + "\n" + GOOD,
    "too_many_policy_lines": "\n".join(f"Read our privacy policy, section {i}." for i in range(8)) + "\n" + GOOD,
    "too_few_sentences": GOOD.replace(".", ";"),
    "too_few_punctuated_lines": "\n".join(line[:-1] for line in LINES),
    "too_many_short_lines": "\n".join(GOOD.split(" ")),
    "too_many_duplicate_line_chars_fineweb": "\n".join(LINES + [LINES[2][:40]] * 2),
    "list_like": "\n".join(f"item {w}" for w in GOOD.split()[:60]),
}


def score(texts: list[str | None], config: HeuristicsConfig | None = None, **columns) -> dict[str, np.ndarray]:
    scorer = HeuristicsScorer(config)
    return scorer.score(make_table(texts, **columns).to_batches()[0])


def failed_rules(texts: list[str | None], defaults_only: bool = False, **columns) -> list[set[str]]:
    """Return the rules each text fails; rules off by default use ``TEST_THRESHOLDS`` unless ``defaults_only``."""
    scorer = HeuristicsScorer()
    scores = scorer.score(make_table(texts, **columns).to_batches()[0])
    failed: list[set[str]] = [set() for _ in texts]
    for rule in scorer.rules:
        threshold = rule.threshold
        if threshold is None and not defaults_only:
            threshold = TEST_THRESHOLDS.get(rule.name)
        for row in np.flatnonzero(rule.fails(scores[rule.field], threshold)):
            failed[row].add(rule.name)
    return failed


def test_every_rule_has_a_trip_document_and_unique_reason():
    names = [rule.name for rule in HeuristicsScorer().rules]
    assert len(names) == len(set(names))
    assert set(names) == set(TRIPS)


def test_good_document_passes_every_rule():
    assert failed_rules([GOOD]) == [set()]
    assert HeuristicsScorer().quality(score([GOOD]), np.array([None])).tolist() == [1.0]


@pytest.mark.parametrize("rule", sorted(TRIPS))
def test_rule_trips_and_passes(rule):
    tripped, passed = failed_rules([TRIPS[rule], GOOD])
    assert rule in tripped, f"{rule} not among {sorted(tripped)}"
    assert rule not in passed


@pytest.mark.parametrize(("text", "field", "expected"), [
    ("a\nb\na\nb", "duplicate_line_fraction", 0.5),
    ("a\nb\na\nb", "duplicate_line_char_fraction", 2 / 7),
    ("a\nb\na\nb", "duplicate_line_char_ratio", 2 / 4),
    ("a\nb\na\nb", "top_2gram_char_fraction", 1.0),  # "a b" twice: 4 of 4 word characters
    ("one\n\ntwo\n\none", "duplicate_paragraph_fraction", 1 / 3),
    ("the cat sat on the mat. the cat sat on the mat.", "top_2gram_char_fraction", 12 / 34),
    ("the cat sat on the mat. the cat sat on the mat.", "top_3gram_char_fraction", 18 / 34),
    ("the cat sat on the mat. the cat sat on the mat.", "duplicate_5gram_char_fraction", 17 / 34),
    ("the cat sat on the mat. the cat sat on the mat.", "duplicate_6gram_char_fraction", 17 / 34),
    ("the cat sat on the mat. the cat sat on the mat.", "duplicate_7gram_char_fraction", 0.0),
    # Repeats of "a b a b a" at words 2 and 4 and of "b a b a b" at 3 overlap: words 2..8 count once.
    ("a b a b a b a b a", "duplicate_5gram_char_fraction", 7 / 9),
    ("The cat, the Dog and THE bird!", "stop_word_count", 4),
    ("The cat, the Dog and THE bird!", "word_count", 7),
    ("The cat, the Dog and THE bird!", "mean_word_length", 22 / 7),
    ("# one ... two … three", "symbol_word_ratio", 2 / 3),
    ("• x.\n- y\n\nz...", "bullet_line_fraction", 2 / 3),
    ("• x.\n- y\n\nz...", "ellipsis_line_fraction", 1 / 3),
    ("• x.\n- y\n\nz...", "punctuated_line_fraction", 2 / 3),
    ("abc 123 x1 45", "alphabetic_word_fraction", 0.5),
    ("One. Two! Three? four", "sentence_count", 3),
])
def test_exact_statistics(text, field, expected):
    assert score([text])[field][0] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("text", ["", "   ", " \n\n \t\n", None])
def test_empty_and_whitespace_give_zeros(text):
    scores = score([text])
    assert all(np.isfinite(values[0]) and values[0] == 0 for values in scores.values())
    assert "too_few_words" in failed_rules([text])[0]


def test_batch_equals_one_at_a_time():
    texts = [GOOD, "", TRIPS["top_2gram_too_frequent"], TRIPS["too_many_duplicate_paragraphs"],
             TRIPS["duplicate_5grams"], "a b a b a b a b a", "   ", TRIPS["list_like"], GOOD]
    batch = score(texts)
    for i, text in enumerate(texts):
        alone = score([text])
        for name, values in batch.items():
            assert values[i] == alone[name][0], (i, name)


def test_instruction_rows_are_judged_only_on_repetition():
    texts = ["What is two plus two? Four.", "What is two plus two? Four."]
    columns = {"prompt": ["What is two plus two?"] * 2, "response": ["Four.", None]}
    scores = score(texts, **columns)
    assert all(np.isnan(scores[name][0]) and not np.isnan(scores[name][1]) for name in PAGE_SHAPE_FIELDS)
    assert scores["top_2gram_char_fraction"][0] == scores["top_2gram_char_fraction"][1]
    assert failed_rules(texts, **columns)[0] == set()
    exempt_off = score(texts, HeuristicsConfig(exempt_instruction_rows=False), **columns)
    assert exempt_off["word_count"].tolist() == [6, 6]


def test_quality_is_share_of_enabled_rules_passed():
    scorer = HeuristicsScorer()
    enabled = sum(rule.threshold is not None for rule in scorer.rules)
    quality = scorer.quality(score(["", GOOD]), np.array([None, None]))
    # Empty text fails too_few_words, mean_word_too_short, too_few_alphabetic_words, too_few_stop_words and
    # too_few_punctuated_lines.
    assert quality.tolist() == pytest.approx([1 - 5 / enabled, 1.0])


def test_config_rejects_unknown_keys_and_uses_its_stop_words():
    with pytest.raises(ValidationError):
        HeuristicsConfig(min_words=3)
    scores = score(["Cats and dogs"], HeuristicsConfig(stop_words=["Cats", "dogs"]))
    assert scores["stop_word_count"][0] == 2


def test_real_wikipedia_passages_mostly_pass(shared_data):
    with open(shared_data / "boolq_wikipedia" / "boolq_validation.csv", newline="") as fh:
        passages = [row["passage"] for row in csv.DictReader(fh)][:500]
    failed = failed_rules(passages, defaults_only=True)
    words = score(passages)["word_count"]
    # Gopher's 50-word minimum removes BoolQ's short passages, exactly those.
    assert [("too_few_words" in f) for f in failed] == (words < 50).tolist()
    long_enough = [f for f, n in zip(failed, words, strict=True) if n >= 50]
    passing = sum(not f for f in long_enough) / len(long_enough)
    reasons = sorted({r for f in long_enough for r in f})
    counts = {r: sum(r in f for f in long_enough) for r in reasons}
    print(f"BoolQ: {passing:.1%} of {len(long_enough)} passages of >= 50 words pass; failing rules {counts}")
    assert passing >= 0.90, f"{passing:.1%} of {len(long_enough)} passages pass; failing rules {counts}"


def _naive_ngrams(text: str) -> dict[str, float]:
    """A per-document reference of the n-gram fields, written the obvious way."""
    words = [w for w in (re.sub(r"[^\w\s]", "", t) for t in text.lower().split()) if w]
    total = sum(map(len, words))
    out = {}
    for n in range(2, 11):
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        counts = Counter(grams)
        if 2 <= n <= 4:
            best = max(((c, sum(map(len, g))) for g, c in counts.items() if c > 1), default=(0, 0))
            out[f"top_{n}gram_char_fraction"] = best[0] * best[1] / total if total else 0.0
        if n >= 5:
            seen, covered = set(), set()
            for i, g in enumerate(grams):
                if g in seen:
                    covered.update(range(i, i + n))
                seen.add(g)
            out[f"duplicate_{n}gram_char_fraction"] = sum(len(words[i]) for i in covered) / total if total else 0.0
    return out


def test_ngram_fields_match_a_naive_reference():
    rng = np.random.default_rng(7)
    vocab = ["a", "bb", "ccc", "dddd", "the", "of"]
    texts = [" ".join(rng.choice(vocab, size=rng.integers(0, 40))) for _ in range(200)]
    scores = score(texts)
    for i, text in enumerate(texts):
        for name, expected in _naive_ngrams(text).items():
            assert scores[name][i] == pytest.approx(expected, rel=1e-6, abs=1e-7), (text, name)
