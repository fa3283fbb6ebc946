"""Heuristic quality scores — Gopher quality and repetition, C4 and FineWeb rules — for a whole batch at once.

Scores are facts about ``text``, computed with Arrow compute and NumPy (no per-document Python); each rule reads one
field and names what failed. Instruction/QA rows (``response`` set) are short by nature: with
``exempt_instruction_rows`` (the default) their web-page shape fields are NaN (unscored, so no rule fails on them),
and only the repetition and lorem-ipsum rules judge them; per-domain overrides can still re-threshold anything.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict
from pydantic import Field as ConfigField

from dctp_tasks.quality.base import Field, Rule, Scorer

#: Gopher's stop words (Rae et al. 2021, §A.1.1), as in datatrove's ``GopherQualityFilter``.
GOPHER_STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]
#: C4's policy phrases (datatrove ``C4QualityFilter.POLICY_SUBSTRINGS``, from TFDS ``c4_utils``).
C4_POLICY_PHRASES = ["terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                     "use cookies"]
# Gopher names "a bullet point"; datatrove checks only "•", RedPajama-V2 a set of these: markdown's -/* added.
_BULLET = r"^[•‣▶◀◦■□▪▫–\-*·●○]"
# FineWeb's stop chars (. ' " ! ?) plus the curly closing quotes normalization may leave.
_TERMINAL = r"[.'\"!?”’]$"
_ELLIPSIS_END = r"(\.\.\.|…)$"
_SENTENCE_END = r"[.!?]+(\s|$)"
_PUNCTUATION = r"[\p{P}\p{S}]+"
_POLY = np.uint64(0x9E3779B97F4A7C15)
TOP_NGRAMS = {2: 0.20, 3: 0.18, 4: 0.16}
DUPLICATE_NGRAMS = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
#: Fields that describe a web page's shape; NaN for instruction rows when ``exempt_instruction_rows``.
PAGE_SHAPE_FIELDS = ("word_count", "mean_word_length", "symbol_word_ratio", "bullet_line_fraction",
                     "ellipsis_line_fraction", "alphabetic_word_fraction", "stop_word_count", "curly_bracket_count",
                     "javascript_line_fraction", "policy_line_fraction", "sentence_count", "punctuated_line_fraction",
                     "short_line_fraction", "newline_word_ratio")


class HeuristicsConfig(BaseModel):
    """Settings of the heuristic scorer; thresholds live in its rules (``heuristics.{rule}`` in config)."""

    model_config = ConfigDict(extra="forbid")

    stop_words: list[str] = ConfigField(default_factory=lambda: list(GOPHER_STOP_WORDS))
    """Words counted by ``stop_word_count`` (lower-cased); default Gopher's eight (Rae et al. 2021)."""
    short_line_chars: int = 30
    """A line of at most this many characters (stripped) is short; FineWeb's ``short_line_length`` = 30."""
    exempt_instruction_rows: bool = True
    """Rows with a ``response`` get NaN in ``PAGE_SHAPE_FIELDS``: length and layout rules are for web pages."""


def _rule_fields() -> tuple[list[Field], list[Rule]]:
    f32 = pa.float32()
    fields = [
        Field("word_count", f32, "words: whitespace tokens left after lower-casing and removing punctuation"),
        Field("mean_word_length", f32, "mean characters per word (0 without words)"),
        Field("symbol_word_ratio", f32, "max of '#' per word and ('...' + '…') per word"),
        Field("bullet_line_fraction", f32, "share of non-blank lines starting with a bullet (•, -, * …)"),
        Field("ellipsis_line_fraction", f32, "share of non-blank lines ending with '...' or '…'"),
        Field("alphabetic_word_fraction", f32, "share of words with at least one letter"),
        Field("stop_word_count", f32, "words in the stop word list (count)"),
        Field("duplicate_line_fraction", f32, "share of non-blank lines repeating an earlier line of the document"),
        Field("duplicate_line_char_fraction", f32, "characters of repeated lines / characters of the text"),
        Field("duplicate_paragraph_fraction", f32, "share of paragraphs (split on blank lines) repeating an earlier"),
        Field("duplicate_paragraph_char_fraction", f32, "characters of repeated paragraphs / characters of the text"),
        *[Field(f"top_{n}gram_char_fraction", f32, f"word characters in all occurrences of the most frequent "
                f"{n}-gram (0 when none repeats) / word characters") for n in TOP_NGRAMS],
        *[Field(f"duplicate_{n}gram_char_fraction", f32, f"word characters covered by repeats of an earlier {n}-gram "
                f"of the document (overlapping repeats counted once) / word characters") for n in DUPLICATE_NGRAMS],
        Field("lorem_ipsum_count", f32, "occurrences of 'lorem ipsum' (any case)"),
        Field("curly_bracket_count", f32, "occurrences of '{'"),
        Field("javascript_line_fraction", f32, "share of non-blank lines mentioning 'javascript' (any case)"),
        Field("policy_line_fraction", f32, "share of non-blank lines with a C4 policy/cookie phrase"),
        Field("sentence_count", f32, "runs of . ! ? followed by whitespace or the end (count)"),
        Field("punctuated_line_fraction", f32, "share of non-blank lines ending in terminal punctuation"),
        Field("short_line_fraction", f32, "share of non-blank lines of at most short_line_chars characters"),
        Field("duplicate_line_char_ratio", f32, "repeated line characters / text characters but newlines"),
        Field("newline_word_ratio", f32, "newlines per word"),
    ]
    gopher = "Gopher (Rae et al. 2021, App. A.1.1; datatrove GopherQualityFilter default)"
    rep = "Gopher repetition (Rae et al. 2021, Table A1; datatrove GopherRepetitionFilter default)"
    fineweb = "FineWeb (Penedo et al. 2024; datatrove FineWebQualityFilter default)"
    c4 = "C4 (Raffel et al. 2020; datatrove C4QualityFilter)"
    rules = [
        Rule("too_few_words", "word_count", "<", 50, f"{gopher}: fewer than 50 words"),
        Rule("too_many_words", "word_count", ">", 100_000, f"{gopher}: more than 100,000 words"),
        Rule("mean_word_too_short", "mean_word_length", "<", 3, f"{gopher}: mean word length below 3 characters"),
        Rule("mean_word_too_long", "mean_word_length", ">", 10, f"{gopher}: mean word length above 10 characters"),
        Rule("too_many_symbols", "symbol_word_ratio", ">", 0.1, f"{gopher}: '#' or ellipsis to word ratio above 0.1"),
        Rule("too_many_bullet_lines", "bullet_line_fraction", ">", 0.9, f"{gopher}: over 90 % of lines bulleted"),
        Rule("too_many_ellipsis_lines", "ellipsis_line_fraction", ">", 0.3,
             f"{gopher}: over 30 % of lines ending with an ellipsis"),
        Rule("too_few_alphabetic_words", "alphabetic_word_fraction", "<", 0.8,
             f"{gopher}: under 80 % of words contain a letter"),
        Rule("too_few_stop_words", "stop_word_count", "<", 2, f"{gopher}: fewer than 2 of the stop words"),
        Rule("too_many_duplicate_lines", "duplicate_line_fraction", ">", 0.3, f"{rep}: duplicate line fraction 0.30"),
        Rule("too_many_duplicate_line_chars", "duplicate_line_char_fraction", ">", 0.2,
             f"{rep}: duplicate line character fraction 0.20"),
        Rule("too_many_duplicate_paragraphs", "duplicate_paragraph_fraction", ">", 0.3,
             f"{rep}: duplicate paragraph fraction 0.30"),
        Rule("too_many_duplicate_paragraph_chars", "duplicate_paragraph_char_fraction", ">", 0.2,
             f"{rep}: duplicate paragraph character fraction 0.20"),
        *[Rule(f"top_{n}gram_too_frequent", f"top_{n}gram_char_fraction", ">", t,
               f"{rep}: top {n}-gram character fraction {t:.2f}") for n, t in TOP_NGRAMS.items()],
        *[Rule(f"duplicate_{n}grams", f"duplicate_{n}gram_char_fraction", ">", t,
               f"{rep}: duplicate {n}-gram character fraction {t:.2f}") for n, t in DUPLICATE_NGRAMS.items()],
        Rule("lorem_ipsum", "lorem_ipsum_count", ">", 0, f"{c4}: drop any page containing 'lorem ipsum'"),
        Rule("curly_bracket", "curly_bracket_count", ">", 0, f"{c4}: drop any page containing a curly bracket"),
        Rule("too_many_javascript_lines", "javascript_line_fraction", ">", 0.5,
             f"{c4} drops each line mentioning javascript; at document level our choice: drop when over half the "
             "lines would go, as what is left is mostly boilerplate"),
        Rule("too_many_policy_lines", "policy_line_fraction", ">", 0.5,
             f"{c4} drops each line with a policy/cookie phrase; at document level our choice: over half the lines"),
        Rule("too_few_sentences", "sentence_count", "<", None,
             f"{c4}: fewer than 5 sentences after its line filters; off by default (too_few_words covers short "
             "pages and C4 counts sentences only on the lines it keeps)"),
        Rule("too_few_punctuated_lines", "punctuated_line_fraction", "<", 0.12,
             f"{fineweb}: 12 % or fewer lines end in punctuation (FineWeb drops at <= 0.12; here < 0.12)"),
        Rule("too_many_short_lines", "short_line_fraction", ">", 0.67,
             f"{fineweb}: 67 % or more lines of <= 30 characters (FineWeb drops at >= 0.67; here > 0.67)"),
        Rule("too_many_duplicate_line_chars_fineweb", "duplicate_line_char_ratio", ">", 0.01,
             f"{fineweb}: duplicated line characters 1 % or more of the text (FineWeb >= 0.01; here > 0.01)"),
        Rule("list_like", "newline_word_ratio", ">", 0.3, f"{fineweb}: more than 0.3 newlines per word"),
    ]
    return fields, rules


def _per_doc(parents: np.ndarray, weights: np.ndarray | None, n: int) -> np.ndarray:
    return np.bincount(parents, weights=weights, minlength=n).astype(np.float64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Return ``num / den``, 0 where ``den`` is 0 (a ratio over nothing is 0, never NaN)."""
    out = np.zeros(len(num), dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _group(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return, for each key, how often it occurs in ``keys`` and whether this is its first occurrence."""
    if not len(keys):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    # One unstable argsort beats Arrow's hash-based dictionary_encode on uint64 keys by ~5x (measured).
    order = np.argsort(keys)
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    group = np.repeat(np.arange(len(starts)), sizes)
    counts = np.empty(len(keys), dtype=np.int64)
    counts[order] = sizes[group]
    first = np.zeros(len(keys), dtype=bool)
    first[np.minimum.reduceat(order, starts)] = True
    return counts, first


def _repeats(parts: pa.ListArray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return per document: stripped non-blank parts, repeats of an earlier part, characters of those repeats."""
    flat = pc.utf8_trim_whitespace(parts.flatten())
    parents = pc.list_parent_indices(parts).to_numpy()
    keep = pc.greater(pc.utf8_length(flat), 0).to_numpy(zero_copy_only=False)
    flat, parents = flat.filter(pa.array(keep)), parents[keep]
    lengths = pc.utf8_length(flat).to_numpy(zero_copy_only=False).astype(np.float64)
    ids = pc.dictionary_encode(flat).indices.to_numpy().astype(np.int64)
    _, first = _group(parents.astype(np.int64) * (int(ids.max(initial=0)) + 1) + ids)
    repeat = (~first).astype(np.float64)
    return _per_doc(parents, None, n), _per_doc(parents, repeat, n), _per_doc(parents, repeat * lengths, n)


def _ngram_fractions(ids: np.ndarray, lengths: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Return the top and duplicate n-gram character fractions over word ids grouped by document.

    An n-gram can only occur twice if its (n-1)-word prefix does, so each size is hashed only at the positions whose
    previous-size n-gram repeats: after the 2-grams, the work shrinks to the repetitive parts of the batch.
    """
    n_docs, total = len(counts), len(ids)
    doc = np.repeat(np.arange(n_docs), counts)
    starts = np.cumsum(counts) - counts
    remaining = np.repeat(counts + starts, counts) - np.arange(total)  # words from a position to its document's end
    cum_chars = np.concatenate([[0], np.cumsum(lengths)])
    word_chars = _per_doc(doc, lengths, n_docs)
    tokens = ids.astype(np.uint64) + np.uint64(1)
    positions = np.flatnonzero(remaining >= 2)
    with np.errstate(over="ignore"):
        hashes = (doc[positions].astype(np.uint64) + np.uint64(1)) * _POLY + tokens[positions]
    out: dict[str, np.ndarray] = {}
    for n in range(2, max(DUPLICATE_NGRAMS) + 1):
        with np.errstate(over="ignore"):
            hashes = hashes * _POLY + tokens[positions + n - 1]
        occurrences, first = _group(hashes)
        repeated = occurrences >= 2
        positions, hashes, occurrences, first = (a[repeated] for a in (positions, hashes, occurrences, first))
        chars = cum_chars[positions + n] - cum_chars[positions]
        if n in TOP_NGRAMS:
            top = np.zeros(n_docs, dtype=np.float64)
            if len(positions):
                # Most frequent n-gram per document, ties to the longest: max of (count, chars) packed in one int.
                packed = occurrences.astype(np.int64) << 32 | chars.astype(np.int64)
                segment = np.flatnonzero(np.r_[True, np.diff(doc[positions]) > 0])
                best = np.maximum.reduceat(packed, segment)
                top[doc[positions[segment]]] = (best >> 32) * (best & 0xFFFFFFFF)
            out[f"top_{n}gram_char_fraction"] = _ratio(top, word_chars)
        if n in DUPLICATE_NGRAMS:
            # Gopher counts the repeats, not the first occurrence; overlapping repeats cover their words once.
            repeats = positions[~first]
            if len(repeats) * n < total // 8:  # few repeats (most text): list the covered words
                covered = np.unique((repeats[:, None] + np.arange(n)).ravel())
            else:  # many: a difference array over the batch marks them in O(words)
                edges = np.zeros(total + 1, dtype=np.int32)
                edges[repeats] += 1
                edges[repeats + n] -= 1
                covered = np.flatnonzero(np.cumsum(edges[:-1]) > 0)
            out[f"duplicate_{n}gram_char_fraction"] = _ratio(_per_doc(doc[covered], lengths[covered], n_docs),
                                                             word_chars)
        keep = remaining[positions] > n  # room for the next word
        positions, hashes = positions[keep], hashes[keep]
    return out


class HeuristicsScorer(Scorer):
    """Score Gopher, C4 and FineWeb heuristics; ``quality`` is the share of enabled rules a document passes."""

    name = "heuristics"
    gpu = False

    def __init__(self, config: HeuristicsConfig | None = None) -> None:
        self.config = config or HeuristicsConfig()
        self.fields, self.rules = _rule_fields()

    def score(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        """Return every field for the batch (float32; ratios over nothing are 0, exempt instruction rows NaN)."""
        n = batch.num_rows
        text = pc.fill_null(batch.column("text"), "")
        chars = pc.utf8_length(text).to_numpy(zero_copy_only=False).astype(np.float64)
        out: dict[str, np.ndarray] = {}

        def count(pattern: str, regex: bool = False, ignore_case: bool = False) -> np.ndarray:
            fn = pc.count_substring_regex if regex else pc.count_substring
            return fn(text, pattern, ignore_case=ignore_case).to_numpy(zero_copy_only=False).astype(np.float64)

        # Words: lower-cased, punctuation and symbols removed (RedPajama-V2's normalization of Gopher's statistics).
        words = pc.utf8_split_whitespace(pc.replace_substring_regex(pc.utf8_lower(text), _PUNCTUATION, ""))
        flat = pc.list_flatten(words)
        parents = pc.list_parent_indices(words).to_numpy()
        encoded = pc.dictionary_encode(flat)
        vocab = encoded.dictionary
        vocab_len = pc.utf8_length(vocab).to_numpy(zero_copy_only=False).astype(np.float64)
        ids = encoded.indices.to_numpy()
        present = vocab_len[ids] > 0  # splitting "" or "  " yields empty tokens
        ids, parents = ids[present], parents[present]
        lengths = vocab_len[ids]
        n_words = _per_doc(parents, None, n)
        is_alpha = pc.match_substring_regex(vocab, r"\pL").to_numpy(zero_copy_only=False).astype(np.float64)
        is_stop = pc.is_in(vocab, pa.array([w.lower() for w in self.config.stop_words], pa.string()))
        is_stop = is_stop.to_numpy(zero_copy_only=False).astype(np.float64)
        out["word_count"] = n_words
        out["mean_word_length"] = _ratio(_per_doc(parents, lengths, n), n_words)
        out["symbol_word_ratio"] = np.maximum(_ratio(count("#"), n_words),
                                              _ratio(count("...") + count("…"), n_words))
        out["alphabetic_word_fraction"] = _ratio(_per_doc(parents, is_alpha[ids], n), n_words)
        out["stop_word_count"] = _per_doc(parents, is_stop[ids], n)
        out.update(_ngram_fractions(ids, lengths, n_words.astype(np.int64)))

        # Lines: non-blank, stripped; blank lines would count as duplicates and as short, unpunctuated lines.
        split = pc.split_pattern(text, "\n")
        lines = pc.utf8_trim_whitespace(pc.list_flatten(split))
        line_doc = pc.list_parent_indices(split).to_numpy()
        line_len = pc.utf8_length(lines).to_numpy(zero_copy_only=False)
        blank = line_len == 0
        line_doc, line_len = line_doc[~blank], line_len[~blank]
        lines = lines.filter(pa.array(~blank))
        n_lines = _per_doc(line_doc, None, n)

        def line_share(mask: pa.Array | np.ndarray) -> np.ndarray:
            mask = mask.to_numpy(zero_copy_only=False) if isinstance(mask, pa.Array) else mask
            return _ratio(_per_doc(line_doc, mask.astype(np.float64), n), n_lines)

        out["bullet_line_fraction"] = line_share(pc.match_substring_regex(lines, _BULLET))
        out["ellipsis_line_fraction"] = line_share(pc.match_substring_regex(lines, _ELLIPSIS_END))
        out["javascript_line_fraction"] = line_share(pc.match_substring(lines, "javascript", ignore_case=True))
        policy = "|".join(C4_POLICY_PHRASES)
        out["policy_line_fraction"] = line_share(pc.match_substring_regex(lines, policy, ignore_case=True))
        out["punctuated_line_fraction"] = line_share(pc.match_substring_regex(lines, _TERMINAL))
        out["short_line_fraction"] = line_share(line_len <= self.config.short_line_chars)
        _, dup_lines, dup_line_chars = _repeats(split, n)
        out["duplicate_line_fraction"] = _ratio(dup_lines, n_lines)
        out["duplicate_line_char_fraction"] = _ratio(dup_line_chars, chars)
        newlines = count("\n")
        out["duplicate_line_char_ratio"] = _ratio(dup_line_chars, chars - newlines)
        out["newline_word_ratio"] = _ratio(newlines, n_words)
        n_paragraphs, dup_paragraphs, dup_paragraph_chars = _repeats(pc.split_pattern_regex(text, r"\n\s*\n"), n)
        out["duplicate_paragraph_fraction"] = _ratio(dup_paragraphs, n_paragraphs)
        out["duplicate_paragraph_char_fraction"] = _ratio(dup_paragraph_chars, chars)

        out["lorem_ipsum_count"] = count("lorem ipsum", ignore_case=True)
        out["curly_bracket_count"] = count("{")
        out["sentence_count"] = count(_SENTENCE_END, regex=True)

        if self.config.exempt_instruction_rows and "response" in batch.schema.names:
            instruction = pc.is_valid(batch.column("response")).to_numpy(zero_copy_only=False)
            for name in PAGE_SHAPE_FIELDS:
                out[name] = np.where(instruction, np.nan, out[name])
        return {f.name: out[f.name].astype(np.float32) for f in self.fields}

    def quality(self, scores: dict[str, np.ndarray], domains: np.ndarray) -> np.ndarray | None:
        """Return the share of enabled rules (default thresholds) each document passes; NaN (unscored) passes."""
        enabled = [rule for rule in self.rules if rule.threshold is not None]
        if not enabled:
            return None
        failed = sum(rule.fails(scores[rule.field]).astype(np.float64) for rule in enabled)
        return 1.0 - failed / len(enabled)
