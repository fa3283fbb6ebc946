"""Seeds: the best real documents of a domain, cut into overlapping word chunks the generator reads one at a time.

Seeds are real (never synthetic) rows whose verdict is ``pass`` (any row when quality is switched off), ranked by
expert consensus ``good`` first, then composite quality. Rows of the day's smaller strata (``annotation.stratify_by``)
come first within each rank tier, so generation widens what the day lacks instead of copying its bulk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_WORD = re.compile(r"\S+")
SEED_COLUMNS = ("doc_id", "domain", "source", "quality", "quality_verdict", "consensus", "synthetic")


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    """``{seed doc_id}#{index}``: the chunk's place in its seed."""
    seed_id: str
    domain: str
    lang: str | None
    text: str


def rank_seeds(facts: pa.Table, domain: str, strata: list[str], limit: int) -> np.ndarray:
    """Return the row numbers of ``facts`` (``SEED_COLUMNS``, one row per kept real row of the day) that seed
    ``domain``, best first, at most ``limit``."""
    usable = _is(facts, "domain", domain) & ~_flag(facts, "synthetic")
    if "quality_verdict" in facts.column_names:
        verdict = facts.column("quality_verdict")
        usable &= pc.fill_null(pc.equal(verdict, "pass"), False).to_numpy(zero_copy_only=False) \
            | pc.is_null(verdict).to_numpy(zero_copy_only=False) & _all_null(verdict)
    rows = np.flatnonzero(usable)
    if not len(rows):
        return rows
    good = _is(facts, "consensus", "good")[rows] if "consensus" in facts.column_names else np.zeros(len(rows), bool)
    quality = (pc.fill_null(facts.column("quality").cast(pa.float64()), -1.0).to_numpy(zero_copy_only=False)[rows]
               if "quality" in facts.column_names else np.zeros(len(rows)))
    ids = np.asarray(facts.column("doc_id").to_pylist(), dtype=object)[rows]
    # within a tier, the k-th best row of every stratum comes before the (k+1)-th of any, smallest strata first
    keys = [np.asarray(facts.column(name).to_pylist(), dtype=object)[rows] for name in strata
            if name in facts.column_names]
    stratum = np.zeros(len(rows), dtype=np.int64)
    if keys:
        joined = np.array(["\x1f".join(map(str, parts)) for parts in zip(*keys, strict=True)], dtype=object)
        _, stratum = np.unique(joined, return_inverse=True)
    sizes = np.bincount(stratum)
    order = np.lexsort((ids, -quality, stratum, ~good))  # best first inside each stratum and tier
    rank_in_stratum = np.empty(len(rows), dtype=np.int64)
    tier_stratum = (~good).astype(np.int64) * (stratum.max() + 1) + stratum
    sorted_groups = tier_stratum[order]
    starts = np.r_[0, np.flatnonzero(sorted_groups[1:] != sorted_groups[:-1]) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    rank_in_stratum[order] = np.arange(len(order)) - group_start
    final = np.lexsort((ids, -quality, sizes[stratum], rank_in_stratum, ~good))
    return rows[final[:limit]]


def chunk_text(text: str, words: int, overlap: int) -> list[str]:
    """Cut ``text`` into windows of ``words`` words, consecutive windows sharing ``overlap`` words; each window is
    the original text between its first and last word (line breaks and spacing kept)."""
    if not 0 <= overlap < words:
        raise ValueError(f"chunk_text needs 0 <= overlap < words, got words={words}, overlap={overlap}")
    spans = [m.span() for m in _WORD.finditer(text or "")]
    if not spans:
        return []
    step = words - overlap
    out = []
    for start in range(0, len(spans), step):
        end = min(start + words, len(spans))
        out.append(text[spans[start][0]:spans[end - 1][1]])
        if end == len(spans):
            break
    return out


def seed_chunks(seeds: pa.Table, needed: int, words: int, overlap: int) -> list[Chunk]:
    """Return ``needed`` chunks at most from ``seeds`` (``doc_id, domain, lang, text``, best first): every seed's
    first chunk, then every seed's second, and so on, so the day's generation spreads over many documents."""
    per_seed = [chunk_text(text or "", words, overlap) for text in seeds.column("text").to_pylist()]
    ids, domains = seeds.column("doc_id").to_pylist(), seeds.column("domain").to_pylist()
    langs = seeds.column("lang").to_pylist() if "lang" in seeds.column_names else [None] * seeds.num_rows
    out: list[Chunk] = []
    depth = max((len(c) for c in per_seed), default=0)
    for index in range(depth):
        for seed, chunks in enumerate(per_seed):
            if index < len(chunks) and len(out) < needed:
                out.append(Chunk(f"{ids[seed]}#{index}", ids[seed], domains[seed], langs[seed], chunks[index]))
    return out


def _is(facts: pa.Table, name: str, value: str) -> np.ndarray:
    return pc.fill_null(pc.equal(facts.column(name), value), False).to_numpy(zero_copy_only=False)


def _flag(facts: pa.Table, name: str) -> np.ndarray:
    if name not in facts.column_names:
        return np.zeros(facts.num_rows, dtype=bool)
    return pc.fill_null(facts.column(name), False).to_numpy(zero_copy_only=False)


def _all_null(column: pa.ChunkedArray) -> bool:
    """Quality switched off leaves every verdict null: then every real row may seed."""
    return column.null_count == len(column)
