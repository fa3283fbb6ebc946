"""Language quality: Flesch reading ease (English), share of words missing from the language's word list, language-ID
confidence.

All three are vectorised over the batch (Arrow regex counts and ``is_in`` against a word list loaded once per
language); NaN where a score does not apply (no word list for the language, readability outside English, no words).
"""

from __future__ import annotations

import gzip
import json
from functools import cache
from importlib import resources

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from dctp_tasks.quality.base import Field as ScoreField
from dctp_tasks.quality.base import Rule, Scorer

#: Languages whose word-frequency list ships inside the ``pyspellchecker`` wheel (``spellchecker/resources``).
WORD_LIST_LANGS = ("ar", "de", "en", "es", "eu", "fa", "fr", "it", "lv", "nl", "pt", "ru")

# textstat's definitions: a word is a whitespace token with a letter or digit; a sentence is a run of text between
# [.!?] runs, counted only with three words or more (so "U.S." or "Dr." do not split), at least one per text.
_WORD = r"[^\s\p{L}\p{N}_]*[\p{L}\p{N}_]\S*"
_SENTENCE_END = r"[.!?]+"
# Syllables, English: vowel groups, less a silent final -e / -ed / -es in words with another vowel group
# ("make", "walked", "makes"; not "table", "wanted", "boxes"), plus one for each word without a vowel ("1990", "Mr").
_VOWEL_GROUP = r"[aeiouy]+"
_WORD_WITH_VOWEL = r"[^\saeiouy]*[aeiouy]\S*"
_SILENT = (r"[aeiouy][a-z]*?(?:(?:[bcdfghjkmnpqrstvwxz]|[aeiouy]l)e|[bcfghjklmnpqrsvwxyz]ed"
           r"|(?:[bdfkmnprtvw]|[aeiouy]l)es)\b")
# Flesch (1948) reading ease for English: 206.835 - 1.015 words/sentence - 84.6 syllables/word.
_FLESCH = (206.835, 1.015, 84.6)

# Word-list lookup: tokens split at whitespace, dashes and slashes, outer punctuation stripped; a word is letters
# with inner apostrophes only (numbers, codes and URLs are not words and are not counted).
_TOKEN_SPLIT = r"[\s\-\x{2010}-\x{2015}/]+"
_OUTER_PUNCT = r"^[\p{P}\p{S}]+|[\p{P}\p{S}]+$"
_ALPHA_WORD = r"^[\p{L}\p{M}]+(?:'[\p{L}\p{M}]+)*$"
# Clitics the lists do not hold: an English suffix ("John's", "we'd") or an elided French/Italian article or
# pronoun ("l'homme", "qu'il", "dell'arte").
_CLITIC_SUFFIX = r"'[\p{L}]{1,2}$"
_ELISION = r"^[\p{L}]{1,5}'([\p{L}\p{M}]{2,})$"


class LanguageQualityConfig(BaseModel):
    """How the language signals feed the composite ``quality``."""

    model_config = ConfigDict(extra="forbid")

    readability_floor: float = Field(30.0, gt=0.0)
    """Flesch reading ease (points) at and above which readability counts fully in ``quality``; below it the share
    falls linearly to 0 at 0. 30 is where Flesch's scale turns from "difficult" (college, typical of encyclopedic
    prose) to "very difficult" (graduate-level, and usually lists, tables or run-on text in web data)."""
    word_list_langs: list[str] = Field(default_factory=lambda: list(WORD_LIST_LANGS))
    """Languages (ISO 639-1, as ``lang`` from normalize) whose out-of-vocabulary share is scored; default every list
    pyspellchecker ships. Russian's list is small (20k words) for an inflected language: its ratios run high."""


class LanguageQualityScorer(Scorer):
    """Score ``readability``, ``oov_ratio`` and ``lang_score`` (float32) from ``text``, ``lang`` and ``lang_score``."""

    name = "language"
    gpu = False

    def __init__(self, config: LanguageQualityConfig | None = None) -> None:
        self.config = config or LanguageQualityConfig()
        unknown = sorted(set(self.config.word_list_langs) - set(WORD_LIST_LANGS))
        if unknown:
            raise ValueError(f"language.word_list_langs: no word list for {unknown}; "
                             f"lists: {', '.join(WORD_LIST_LANGS)}")
        self.fields = [
            ScoreField("readability", pa.float32(), "Flesch reading ease (points, higher = easier; 60-70 plain "
                       "English, below 30 very difficult); English only, NaN for other languages"),
            ScoreField("oov_ratio", pa.float32(), "share of alphabetic words not in the language's pyspellchecker "
                       "word list (0-1); NaN when the language has no list or the text no word"),
            ScoreField("lang_score", pa.float32(), "fastText lid.176 confidence in the detected language (0-1), "
                       "copied from normalize"),
        ]
        self.rules = [
            Rule("uncertain_language", "lang_score", "<", 0.65,
                 "language ID confidence below 0.65: FineWeb's LanguageFilter threshold (language_threshold=0.65)"),
            Rule("too_many_unknown_words", "oov_ratio", ">", 0.5,
                 "more than half of the words are not in the language's word list: gibberish, code, tables or the "
                 "wrong language; clean prose stays far below (BoolQ Wikipedia passages, names included: 99.9 % "
                 "below 0.25, none above 0.33)"),
            Rule("hard_to_read", "readability", "<", None,
                 "Flesch reading ease below the threshold (30 = very difficult); off by default: hard is not bad"),
        ]

    def score(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        """Return ``readability``, ``oov_ratio`` and ``lang_score`` for every row of ``batch``."""
        texts = batch.column("text")
        names = batch.schema.names
        n = batch.num_rows
        langs = batch.column("lang") if "lang" in names else pa.nulls(n, pa.string())
        english = pc.fill_null(pc.equal(langs, "en"), False).to_numpy(zero_copy_only=False)
        readability = np.full(n, np.nan)
        if english.any():
            rows = np.flatnonzero(english)
            readability[rows] = flesch_reading_ease(texts.take(pa.array(rows)))
        lang_score = np.full(n, np.nan, np.float32)
        if "lang_score" in names:
            column = pc.fill_null(batch.column("lang_score").cast(pa.float32()), np.nan)
            lang_score = column.to_numpy(zero_copy_only=False)
        return {
            "readability": readability.astype(np.float32),
            "oov_ratio": oov_ratios(texts, langs, self.config.word_list_langs).astype(np.float32),
            "lang_score": np.asarray(lang_score, np.float32),
        }

    def quality(self, scores: dict[str, np.ndarray], domains: np.ndarray) -> np.ndarray:
        """Return the mean of the signals present: ``1 - oov_ratio``, ``lang_score``, readability up to the floor."""
        readable = np.clip(np.asarray(scores["readability"], np.float64) / self.config.readability_floor, 0.0, 1.0)
        parts = np.vstack([1.0 - np.asarray(scores["oov_ratio"], np.float64),
                           np.asarray(scores["lang_score"], np.float64), readable])
        present = ~np.isnan(parts)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.clip(np.where(present, parts, 0.0).sum(axis=0) / present.sum(axis=0), 0.0, 1.0)


def flesch_reading_ease(texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Return the English Flesch reading ease of each text (float64; NaN for null texts or texts without words).

    Word and sentence counts follow textstat 0.7 exactly; syllables are estimated from vowel groups (textstat looks
    them up in the CMU dictionary, which nltk downloads at run time). Tested against textstat on BoolQ passages.
    """
    lower = pc.utf8_lower(texts)
    words = _count(lower, _WORD)
    pieces = pc.split_pattern_regex(lower, _SENTENCE_END)
    piece_words = _count(pc.list_flatten(pieces), _WORD)
    parents = pc.list_parent_indices(pieces).to_numpy(zero_copy_only=False)
    sentences = np.maximum(1, np.bincount(parents[piece_words >= 3], minlength=len(texts)))
    syllables = _count(lower, _VOWEL_GROUP) - _count(lower, _SILENT)
    syllables += np.maximum(0, words - _count(lower, _WORD_WITH_VOWEL))
    base, per_sentence, per_syllable = _FLESCH
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(words > 0, base - per_sentence * words / sentences - per_syllable * syllables / words, np.nan)


def oov_ratios(texts: pa.Array | pa.ChunkedArray, langs: pa.Array | pa.ChunkedArray,
               word_list_langs: list[str] | tuple[str, ...] = WORD_LIST_LANGS) -> np.ndarray:
    """Return the share of each text's alphabetic words missing from its language's word list (NaN: no list/words)."""
    out = np.full(len(texts), np.nan)
    langs = pc.fill_null(langs, "")
    for lang in pc.unique(langs).to_pylist():
        if lang not in word_list_langs:
            continue
        rows = np.flatnonzero(pc.equal(langs, lang).to_numpy(zero_copy_only=False))
        known, total = _known_words(texts.take(pa.array(rows)), word_list(lang))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[rows] = np.where(total > 0, 1.0 - known / total, np.nan)
    return out


@cache
def word_list(lang: str) -> pa.Array:
    """Return the words of pyspellchecker's ``{lang}.json.gz`` frequency list (lower case), read once per process."""
    path = resources.files("spellchecker") / "resources" / f"{lang}.json.gz"
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as fh:
        return pa.array(sorted(json.load(fh)), pa.string())


def _known_words(texts: pa.Array | pa.ChunkedArray, vocabulary: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Return (words found in ``vocabulary``, alphabetic words) per text."""
    lower = pc.replace_substring(pc.utf8_lower(texts), "\u2019", "'")
    tokens = pc.split_pattern_regex(lower, _TOKEN_SPLIT)
    flat = pc.replace_substring_regex(pc.list_flatten(tokens), _OUTER_PUNCT, "")
    parents = pc.list_parent_indices(tokens)
    is_word = pc.match_substring_regex(flat, _ALPHA_WORD)
    words, parents = flat.filter(is_word), parents.filter(is_word).to_numpy(zero_copy_only=False)
    known = pc.is_in(words, value_set=vocabulary).to_numpy(zero_copy_only=False)
    clitic = np.flatnonzero(~known & pc.match_substring(words, "'").to_numpy(zero_copy_only=False))
    if len(clitic):
        candidates = words.take(pa.array(clitic))
        bare = pc.is_in(pc.replace_substring_regex(candidates, _CLITIC_SUFFIX, ""), value_set=vocabulary)
        elided = pc.is_in(pc.replace_substring_regex(candidates, _ELISION, r"\1"), value_set=vocabulary)
        known[clitic] = pc.or_(bare, elided).to_numpy(zero_copy_only=False)
    n = len(texts)
    return np.bincount(parents, weights=known, minlength=n), np.bincount(parents, minlength=n).astype(np.float64)


def _count(texts: pa.Array | pa.ChunkedArray, pattern: str) -> np.ndarray:
    return pc.fill_null(pc.count_substring_regex(texts, pattern), 0).to_numpy(zero_copy_only=False).astype(np.float64)
