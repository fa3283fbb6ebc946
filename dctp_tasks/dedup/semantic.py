"""Semantic dedup (SemDeDup-style): drop docs whose normalized embedding has cosine >= threshold to a kept doc.

Reads ``dedup_near``, publishes ``dedup_semantic`` and ``state/embeddings/dt=D``: the day's survivors as
``doc_id: string, embedding: fixed_size_list<float16|float32>[dim]`` (L2-normalized; later stages reuse them instead
of encoding twice), with the encoder that made them (name, weights fingerprint, width) in the file metadata: history
made by another encoder is refused, since its vectors live in another space. History (dates < D only, so dates
re-run in any order) beats today; within the day the earliest ``created_at``, then the smallest ``doc_id`` survives
(or the longest text). A doc is judged by its domain's threshold.
The search reaches ``REPORT_MARGIN`` below the lowest threshold, so the run's report
(``reports/dt=D/dedup_semantic.md``) can show the pairs just below each threshold next to those just above.

Search (``dctp_tasks.dedup.search``): a *range search* — every neighbour above a cosine radius, which is exactly
"all pairs >= threshold" — not top-k (usearch's), which silently misses pairs in large duplicate clusters. On the
CPU it is faiss (``faiss-cpu``): exact ``IndexFlatIP``, or with ``nlist`` > 0 an IVF index (k-means cells, SemDeDup's
partitioning) for very large days. On CUDA (``search: auto``) it is an exact blockwise fp16 matrix product in torch:
faiss-cpu is quadratic (about an hour for a million docs), and faiss-gpu is not pip-installable for every CUDA.
Both find candidates a margin below the radius and rescore them in float64, so faiss flat and torch give the same
pairs and cosines, and re-runs the same survivors.
History is never held in RAM: it is scanned ``history_batch_size`` rows at a time and each batch searches today's
index, keeping for each of today's docs only its best match.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dctp_tasks.config import PipelineConfig, SemanticDedupConfig
from dctp_tasks.dedup.report import SAMPLE_PAIRS, SamplePair, stage_report
from dctp_tasks.dedup.search import backend_of, build_index, range_search, resolve_backend
from dctp_tasks.dedup.verdicts import apply_verdicts, row_thresholds, survivor_rank
from dctp_tasks.embeddings import (
    STATE,
    embed_texts,
    embeddings_schema,
    encoder_identity,
    encoder_mismatch,
    stored_encoder,
    vectors_matrix,
)
from dctp_tasks.publish import earlier_partitions, publish
from dctp_tasks.records import params_hash
from dctp_tasks.staging import ROWS, stage_output, stage_rows
from dctp_tasks.stats import StageResult, Timer
from dctp_tasks.storage import Storage, state_dir

log = logging.getLogger(__name__)

STAGE = "dedup_semantic"
INPUT_STAGE = "dedup_near"
REASON = "semantic_duplicate"
_LATEST = pa.scalar(np.iinfo(np.int64).max, pa.int64())
_EPS = 1e-6  # range search is strict (>); widen the radius so ">= threshold" holds
REPORT_MARGIN = 0.05  # pairs this far below their threshold are found too, and sampled for the report


def dedup_semantic_day(storage: Storage, config: PipelineConfig, dag_id: str, dt: str, *,
                       input_stage: str = INPUT_STAGE, input_version: str | None = None) -> StageResult:
    """Drop semantic duplicates of date ``dt``; return counts (``dropped_semantic_duplicate``)."""
    cfg = config.dedup_semantic
    in_dir = stage_rows(storage, dag_id, dt, input_stage, input_version)
    step_params = params_hash(cfg.model_dump(mode="json", exclude={"device", "batch_size", "token_budget", "search"}))
    with Timer() as timer:
        doc_ids, rank, thresholds, vectors, embed_seconds = _day_embeddings(storage, in_dir, cfg, config.batch_size)
        lowest = min([cfg.threshold, *cfg.domain_thresholds.values()])
        radius = lowest - REPORT_MARGIN - _EPS
        encoder = encoder_identity(cfg, vectors.shape[1])
        index = _build_index(vectors, cfg)
        log.info("dedup_semantic dt=%s: %s range search over %d docs", dt, backend_of(index), len(rank))
        history = _history_best(storage, dt, index, len(rank), encoder, radius, cfg.history_batch_size)
        verdicts = _decide(doc_ids, rank, thresholds, _day_pairs(index, vectors, rank, radius), history)
        _write_state(storage, dt, doc_ids.filter(pa.array(verdicts["position"] < 0)),
                     vectors[verdicts["position"] < 0], cfg.storage_dtype, encoder)
        with stage_output(storage, dag_id, dt, STAGE) as out:
            applied = apply_verdicts(storage, dt, STAGE, REASON, in_dir, out, position=verdicts["position"],
                                     duplicate_of=verdicts["duplicate_of"], detail=verdicts["detail"],
                                     step_params=step_params, batch_size=config.batch_size)
        report = stage_report(
            storage, STAGE, dt, in_dir, lambda day: stage_rows(storage, dag_id, day, STAGE),
            method=f"cosine of normalized {cfg.model or 'all-MiniLM-L6-v2'} embeddings, {cfg.survivor} survives",
            measure="cosine", thresholds=_describe(cfg), clusters=verdicts["clusters"], rates=applied.rates,
            pairs=verdicts["samples"])
    result = StageResult(STAGE, storage.uri(out.sub(ROWS)), total=applied.total, kept=applied.kept,
                         version=out.version)
    result.seconds = timer.seconds
    result.dropped_by_reason = applied.dropped_by_reason
    result.extra = {"duplicates_of_history": verdicts["of_history"], "candidate_pairs": verdicts["pairs"],
                    "clusters": verdicts["clusters"], "state_rows": result.kept,
                    "embed_docs_per_s": round(len(rank) / embed_seconds, 1) if embed_seconds > 0 else 0.0,
                    "report": report, "search": backend_of(index)}
    log.info("dedup_semantic dt=%s: %d in, %d kept, %d semantic duplicates (%d of earlier dates), %d pairs >= %.3f "
             "(%s search)", dt, result.total, result.kept, result.dropped, verdicts["of_history"], verdicts["pairs"],
             lowest, result.extra["search"])
    return result


def _describe(cfg: SemanticDedupConfig) -> str:
    domains = ", ".join(f"{name} {value:.2f}" for name, value in sorted(cfg.domain_thresholds.items()))
    return f"{cfg.threshold:.2f}" + (f"; per domain: {domains} (a doc is judged by its own domain's)"
                                     if domains else "")


def _day_embeddings(storage: Storage, in_dir: str, cfg: SemanticDedupConfig, batch_size: int
                    ) -> tuple[pa.Array, np.ndarray, np.ndarray, np.ndarray, float]:
    """Return every row's ``doc_id``, survivor rank (0 = best), threshold and embedding, in file order.

    Embeddings are rounded to the storage dtype, so today's rows compare exactly as they will as history.
    """
    from dctp_tasks.models import sentence_encoder

    sentence_encoder(cfg.model, cfg.device, cfg.max_seq_length)  # load outside the timed encoding
    ids, orders, lengths, domains, vectors = [], [], [], [], []
    seconds = 0.0
    for batch in storage.iter_batches(in_dir, batch_size=batch_size,
                                      columns=["doc_id", "text", "created_at", "domain"]):
        texts = pc.fill_null(batch.column("text"), "")
        start = time.perf_counter()
        vectors.append(embed_texts(texts.to_pylist(), cfg).astype(cfg.storage_dtype).astype(np.float32))
        seconds += time.perf_counter() - start
        ids.append(batch.column("doc_id"))
        created = pc.fill_null(pc.cast(batch.column("created_at"), pa.int64()), _LATEST)  # undated rows lose
        orders.append(created.to_numpy(zero_copy_only=False))
        lengths.append(pc.utf8_length(texts).to_numpy(zero_copy_only=False))
        domains.append(batch.column("domain"))
    if not ids:
        dim = embed_texts([""], cfg).shape[1]  # an empty day still writes state with the model's width
        return pa.array([], pa.string()), np.zeros(0, np.int64), np.zeros(0), np.zeros((0, dim), np.float32), 0.0
    doc_ids = pa.concat_arrays(ids)
    rank = survivor_rank(doc_ids, np.concatenate(orders), np.concatenate(lengths), cfg.survivor)
    thresholds = row_thresholds(pa.concat_arrays(domains), cfg.threshold, cfg.domain_thresholds)
    return doc_ids, rank, thresholds, np.ascontiguousarray(np.concatenate(vectors)), seconds


def _build_index(vectors: np.ndarray, cfg: SemanticDedupConfig):
    """Return the range-search index over today's vectors, of the backend ``cfg.search`` resolves to."""
    return build_index(vectors, resolve_backend(cfg.search, cfg.device, cfg.nlist), nlist=cfg.nlist,
                       nprobe=cfg.nprobe, device=cfg.device)


def _history_best(storage: Storage, dt: str, index, n: int, encoder: dict, radius: float,
                  batch_size: int) -> dict[str, np.ndarray]:
    """Scan history before ``dt`` in batches; return each of today's rows' best match (cosine, doc_id, dt)."""
    best = {"cosine": np.full(n, -np.inf, dtype=np.float32), "doc_id": np.full(n, None, dtype=object),
            "dt": np.full(n, None, dtype=object)}
    for day, folder in earlier_partitions(storage, state_dir(STATE), dt):
        # Another encoder's vectors live in another space: comparing them would match nothing, or anything.
        mismatch = encoder_mismatch(stored_encoder(storage.parquet_schema(folder)), encoder)
        if mismatch:
            raise ValueError(f"history state/{STATE}/dt={day} cannot be compared with today's embeddings: {mismatch}. "
                             f"Set dedup_semantic.model back to the encoder that made it, or re-run dedup_semantic "
                             f"for every date from the first one in order to rebuild the history")
        if n == 0:
            continue
        for batch in storage.iter_batches(folder, batch_size=batch_size):
            if batch.num_rows == 0:
                continue
            hist_rows, today, sims = range_search(index, vectors_matrix(batch.column("embedding")), radius)
            if not len(today):
                continue
            # Best per today's row: highest cosine, ties to the earlier history row (scan order is dt, file order).
            order = np.lexsort((hist_rows, -sims, today))
            today, hist_rows, sims = today[order], hist_rows[order], sims[order]
            first = np.flatnonzero(np.r_[True, today[1:] != today[:-1]])
            today, hist_rows, sims = today[first], hist_rows[first], sims[first]
            better = sims > best["cosine"][today]
            today, hist_rows = today[better], hist_rows[better]
            best["cosine"][today] = sims[better]
            best["doc_id"][today] = np.asarray(batch.column("doc_id").take(pa.array(hist_rows)).to_pylist(), object)
            best["dt"][today] = day
    return best


def _day_pairs(index, vectors: np.ndarray, rank: np.ndarray, radius: float) -> tuple[np.ndarray, ...]:
    """Return today's pairs above ``radius`` as ``(better, worse, cosine)`` rows, each pair once."""
    u, v, sims = range_search(index, vectors, radius)
    keep = u != v
    u, v, sims = u[keep], v[keep], sims[keep]
    better = np.where(rank[u] < rank[v], u, v)
    worse = np.where(rank[u] < rank[v], v, u)
    # An IVF search may find a pair from one side only; keep each pair once whichever way it was found.
    _, first = np.unique(better * len(rank) + worse, return_index=True)
    return better[first], worse[first], sims[first]


def _decide(doc_ids: pa.Array, rank: np.ndarray, thresholds: np.ndarray, pairs: tuple[np.ndarray, ...],
            history: dict[str, np.ndarray]) -> dict:
    """Pick survivors: history matches drop first; then, best rank first, a row drops if a kept row matches it.

    Greedy (as SemDeDup) rather than connected components: a duplicate's ``duplicate_of`` is always a survivor
    it really matches, and chains of near neighbours do not drift into unrelated text.
    """
    n = len(rank)
    of_history = history["cosine"] >= thresholds
    alive = ~of_history
    dup_of = np.full(n, -1, dtype=np.int64)
    dup_cos = history["cosine"].astype(np.float64)
    better, worse, sims = pairs
    judged = sims >= thresholds[worse]
    better, worse, sims = better[judged], worse[judged], sims[judged]
    # Rows in rank order, each row's candidates by cosine then rank: a better row's fate is settled before.
    order = np.lexsort((rank[better], -sims, rank[worse]))
    for b, w, s in zip(better[order].tolist(), worse[order].tolist(), sims[order].tolist(), strict=True):
        if alive[w] and alive[b]:
            alive[w] = False
            dup_of[w] = b
            dup_cos[w] = s
    dup_rows = np.flatnonzero(~alive)
    position = np.full(n, -1, dtype=np.int64)
    position[dup_rows] = np.arange(len(dup_rows))
    ids = doc_ids.to_pylist()
    duplicate_of, detail = [], []
    for row in dup_rows.tolist():
        if of_history[row]:
            duplicate_of.append(history["doc_id"][row])
            detail.append(f"cosine={dup_cos[row]:.3f} (history dt={history['dt'][row]})")
        else:
            duplicate_of.append(ids[dup_of[row]])
            detail.append(f"cosine={dup_cos[row]:.3f} (same day)")
    return {"position": position, "duplicate_of": pa.array(duplicate_of, pa.string()),
            "detail": pa.array(detail, pa.string()), "of_history": int(of_history.sum()), "pairs": int(judged.sum()),
            "clusters": len(set(duplicate_of)), "samples": _samples(ids, thresholds, pairs, history)}


def _samples(ids: list[str], thresholds: np.ndarray, pairs: tuple[np.ndarray, ...],
             history: dict[str, np.ndarray]) -> list[SamplePair]:
    """Return the pairs nearest the judged doc's threshold, on each side (below: within ``REPORT_MARGIN``)."""
    better, worse, sims = pairs
    hist_rows = np.flatnonzero(np.isfinite(history["cosine"]))
    found = [(worse, better, sims.astype(np.float64), False),
             (hist_rows, hist_rows, history["cosine"][hist_rows].astype(np.float64), True)]
    out = []
    for rows, others, cosine, of_history in found:
        gap = cosine - thresholds[rows]
        for side in (gap >= 0, (gap < 0) & (gap >= -REPORT_MARGIN)):
            chosen = np.flatnonzero(side)
            chosen = chosen[np.lexsort((others[chosen], rows[chosen], np.abs(gap[chosen])))][:SAMPLE_PAIRS]
            for i in chosen.tolist():
                row, other = int(rows[i]), int(others[i])
                out.append(SamplePair(round(float(cosine[i]), 4), float(thresholds[row]), ids[row],
                                      history["doc_id"][row] if of_history else ids[other],
                                      history["dt"][row] if of_history else None))
    return out


def _write_state(storage: Storage, dt: str, doc_ids: pa.Array, vectors: np.ndarray, dtype: str,
                 encoder: dict) -> None:
    """Publish the day's surviving embeddings: the history later dates deduplicate against, and reusable vectors."""
    dim = vectors.shape[1]
    schema = embeddings_schema(dim, dtype, encoder)
    flat = pa.array(np.ascontiguousarray(vectors, dtype=dtype).ravel())
    # Row groups of 10k vectors: quality scorers read back single batches' vectors by row number.
    with publish(storage, state_dir(STATE, dt), meta={"encoder": encoder}) as state, \
            state.writer(schema=schema, row_group_size=10_000) as writer:
        writer.write(pa.table({"doc_id": doc_ids, "embedding": pa.FixedSizeListArray.from_arrays(flat, dim)},
                              schema=schema))
