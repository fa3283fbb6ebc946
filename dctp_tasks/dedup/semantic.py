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
import posixpath
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
    vectors_column,
    vectors_matrix,
)
from dctp_tasks.publish import Publication, earlier_partitions, publish
from dctp_tasks.records import params_hash
from dctp_tasks.shards import Shard, ShardedStage, ShardOutput, iter_shard, plan_shards, publish_shards, shard_stats
from dctp_tasks.staging import ROWS, stage_rows
from dctp_tasks.stats import StageResult, Timer
from dctp_tasks.storage import Storage, staging_dir, state_dir

log = logging.getLogger(__name__)

STAGE = "dedup_semantic"
INPUT_STAGE = "dedup_near"
REASON = "semantic_duplicate"
_LATEST = pa.scalar(np.iinfo(np.int64).max, pa.int64())
_EPS = 1e-6  # range search is strict (>); widen the radius so ">= threshold" holds
REPORT_MARGIN = 0.05  # pairs this far below their threshold are found too, and sampled for the report
_WORK = "_work"  # inside the version the shards build: today's vectors, pairs, history matches; deleted once published
_PAIRS_SCHEMA = pa.schema([("better", pa.int64()), ("worse", pa.int64()), ("cosine", pa.float64())])
_BEST_SCHEMA = pa.schema([("row", pa.int64()), ("cosine", pa.float32()), ("doc_id", pa.string()), ("dt", pa.string())])


def dedup_semantic_day(storage: Storage, config: PipelineConfig, dag_id: str, dt: str, *,
                       input_stage: str = INPUT_STAGE, input_version: str | None = None) -> StageResult:
    """Drop semantic duplicates of date ``dt``; return counts (``dropped_semantic_duplicate``)."""
    return SEMANTIC.run_all(storage, config, dag_id, dt, input_stage=input_stage, input_version=input_version)


def plan_semantic(storage: Storage, config: PipelineConfig, dag_id: str, dt: str, *, input_stage: str = INPUT_STAGE,
                  input_version: str | None = None) -> list[Shard]:
    """Split the day into shards (``sharding.shards.dedup_semantic``): each encodes its rows, then searches with
    them as the queries (a block of today's vectors against all of today's and against history)."""
    return plan_shards(storage, config, dag_id, dt, STAGE, input_stage=input_stage, input_version=input_version)


def encode_shard(storage: Storage, config: PipelineConfig, shard: Shard) -> dict:
    """Embed the shard's rows; store them (rounded to the storage dtype) with what ranks and judges them."""
    from dctp_tasks.models import sentence_encoder

    cfg = config.dedup_semantic
    sentence_encoder(cfg.model, cfg.device, cfg.max_seq_length)  # load outside the timed encoding
    out = ShardOutput(storage, shard, "encode")
    seconds, writer = 0.0, None
    for batch in iter_shard(storage, shard, batch_size=config.batch_size,
                            columns=["doc_id", "text", "created_at", "domain"]):
        texts = pc.fill_null(batch.column("text"), "")
        start = time.perf_counter()
        vectors = embed_texts(texts.to_pylist(), cfg)
        seconds += time.perf_counter() - start
        if writer is None:
            writer = out.writer(_WORK, "vectors", schema=_vectors_schema(vectors.shape[1], cfg)).__enter__()
        created = pc.fill_null(pc.cast(batch.column("created_at"), pa.int64()), _LATEST)  # undated rows lose
        writer.write(pa.table({"doc_id": batch.column("doc_id"), "created": created,
                               "length": pc.cast(pc.utf8_length(texts), pa.int64()), "domain": batch.column("domain"),
                               "embedding": vectors_column(vectors, cfg.storage_dtype)}))
    if writer is None:  # no rows: the file still records the model's width
        writer = out.writer(_WORK, "vectors", schema=_vectors_schema(embed_texts([""], cfg).shape[1], cfg))
        writer.__enter__()
    writer.__exit__(None, None, None)
    return out.done({"rows": writer.rows, "embed_seconds": seconds})


def search_shard(storage: Storage, config: PipelineConfig, shard: Shard) -> dict:
    """Range-search the shard's block of today's vectors against all of today's and against every earlier date's."""
    cfg = config.dedup_semantic
    work = posixpath.join(shard.output(), _WORK)
    out = ShardOutput(storage, shard, "search")
    with Timer() as timer:
        today = storage.read_table(work, "vectors")
        rank, _ = _ranks(today, cfg)
        vectors = vectors_matrix(today.column("embedding"))
        radius = _radius(cfg)
        block = vectors[shard.start:shard.stop]
        index = _build_index(vectors, cfg)
        log.info("%s: %s range search of %d docs against %d", shard.label, backend_of(index), len(block), len(rank))
        pairs = _day_pairs(index, block, shard.start, rank, radius) if len(block) else _no_pairs()
        history = _history_best(storage, shard.dt, _build_index(block, cfg), len(block),
                                encoder_identity(cfg, vectors.shape[1]), radius, cfg.history_batch_size)
        with out.writer(_WORK, "pairs", schema=_PAIRS_SCHEMA) as writer:
            writer.write(pa.table(dict(zip(_PAIRS_SCHEMA.names, pairs, strict=True)), schema=_PAIRS_SCHEMA))
        with out.writer(_WORK, "history", schema=_BEST_SCHEMA) as writer:
            writer.write(pa.table({"row": np.arange(shard.start, shard.stop), **history}, schema=_BEST_SCHEMA))
    return out.done({"pairs": len(pairs[0]), "seconds": timer.seconds, "search": backend_of(index)})


def finish_semantic(storage: Storage, config: PipelineConfig, shards: list[Shard]) -> StageResult:
    """Pick survivors from every shard's pairs and history matches; publish them, the date's vectors, a report."""
    cfg = config.dedup_semantic
    first = shards[0]
    dag_id, dt = first.dag_id, first.dt
    work = posixpath.join(first.output(), _WORK)
    encoded = shard_stats(storage, shards, "encode")
    searched = shard_stats(storage, shards, "search")
    in_dir = first.input(storage)
    step_params = params_hash(cfg.model_dump(mode="json", exclude={"device", "batch_size", "token_budget", "search"}))
    with Timer() as timer:
        today = storage.read_table(work, "vectors")
        doc_ids = today.column("doc_id").combine_chunks()
        rank, thresholds = _ranks(today, cfg)
        found = storage.read_table(work, "pairs")
        better, worse = found.column("better").to_numpy(), found.column("worse").to_numpy()
        # Two blocks find a pair between them from both sides: keep it once.
        _, once = np.unique(better * max(len(rank), 1) + worse, return_index=True)
        pairs = (better[once], worse[once], found.column("cosine").to_numpy()[once])
        best = storage.read_table(work, "history").sort_by("row")
        history = {"cosine": best.column("cosine").to_numpy(),
                   "doc_id": np.asarray(best.column("doc_id").to_pylist(), dtype=object),
                   "dt": np.asarray(best.column("dt").to_pylist(), dtype=object)}
        verdicts = _decide(doc_ids, rank, thresholds, pairs, history)
        survivors = pa.array(verdicts["position"] < 0)
        dim = today.schema.field("embedding").type.list_size
        _write_state(storage, dt, doc_ids.filter(survivors), today.column("embedding").filter(survivors), dim,
                     cfg.storage_dtype, encoder_identity(cfg, dim))
        out = Publication(storage, staging_dir(dag_id, dt, STAGE), token=first.version)
        applied = apply_verdicts(storage, dt, STAGE, REASON, in_dir, out, position=verdicts["position"],
                                 duplicate_of=verdicts["duplicate_of"], detail=verdicts["detail"],
                                 step_params=step_params, batch_size=config.batch_size)
        publish_shards(storage, shards)
        storage.delete_dir(work)
        report = stage_report(
            storage, STAGE, dt, in_dir, lambda day: stage_rows(storage, dag_id, day, STAGE),
            method=f"cosine of normalized {cfg.model or 'all-MiniLM-L6-v2'} embeddings, {cfg.survivor} survives",
            measure="cosine", thresholds=_describe(cfg), clusters=verdicts["clusters"], rates=applied.rates,
            pairs=verdicts["samples"])
    embed_seconds = sum(s["embed_seconds"] for s in encoded)
    search = searched[0]["search"]
    result = StageResult(STAGE, storage.uri(out.sub(ROWS)), total=applied.total, kept=applied.kept,
                         version=out.version)
    result.seconds = timer.seconds + embed_seconds + sum(s["seconds"] for s in searched)
    result.dropped_by_reason = applied.dropped_by_reason
    result.extra = {"duplicates_of_history": verdicts["of_history"], "candidate_pairs": verdicts["pairs"],
                    "clusters": verdicts["clusters"], "state_rows": result.kept,
                    "embed_docs_per_s": round(len(rank) / embed_seconds, 1) if embed_seconds > 0 else 0.0,
                    "report": report, "search": search, "shards": len(shards)}
    log.info("dedup_semantic dt=%s: %d in, %d kept, %d semantic duplicates (%d of earlier dates), %d pairs >= %.3f "
             "(%s search, %d shard(s))", dt, result.total, result.kept, result.dropped, verdicts["of_history"],
             verdicts["pairs"], min([cfg.threshold, *cfg.domain_thresholds.values()]), search, len(shards))
    return result


SEMANTIC = ShardedStage(plan_semantic, {"encode": encode_shard, "search": search_shard}, finish_semantic)


def _radius(cfg: SemanticDedupConfig) -> float:
    """Return the search radius: a margin below the lowest threshold, so the report sees the pairs just below."""
    return min([cfg.threshold, *cfg.domain_thresholds.values()]) - REPORT_MARGIN - _EPS


def _ranks(today: pa.Table, cfg: SemanticDedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """Return each of today's rows' survivor rank (0 = best) and threshold."""
    rank = survivor_rank(today.column("doc_id").combine_chunks(), today.column("created").to_numpy(),
                         today.column("length").to_numpy(), cfg.survivor)
    return rank, row_thresholds(today.column("domain").combine_chunks(), cfg.threshold, cfg.domain_thresholds)


def _vectors_schema(dim: int, cfg: SemanticDedupConfig) -> pa.Schema:
    value = pa.float16() if cfg.storage_dtype == "float16" else pa.float32()
    return pa.schema([("doc_id", pa.string()), ("created", pa.int64()), ("length", pa.int64()),
                      ("domain", pa.string()), ("embedding", pa.list_(value, dim))])


def _no_pairs() -> tuple[np.ndarray, ...]:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)


def _describe(cfg: SemanticDedupConfig) -> str:
    domains = ", ".join(f"{name} {value:.2f}" for name, value in sorted(cfg.domain_thresholds.items()))
    return f"{cfg.threshold:.2f}" + (f"; per domain: {domains} (a doc is judged by its own domain's)"
                                     if domains else "")


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


def _day_pairs(index, queries: np.ndarray, offset: int, rank: np.ndarray, radius: float) -> tuple[np.ndarray, ...]:
    """Return the pairs above ``radius`` between today's rows ``offset``… (``queries``) and all of today's, as
    ``(better, worse, cosine)`` rows, each pair once."""
    u, v, sims = range_search(index, queries, radius)
    u = u + offset
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


def _write_state(storage: Storage, dt: str, doc_ids: pa.Array, vectors: pa.ChunkedArray, dim: int, dtype: str,
                 encoder: dict) -> None:
    """Publish the day's surviving embeddings: the history later dates deduplicate against, and reusable vectors."""
    schema = embeddings_schema(dim, dtype, encoder)
    # Row groups of 10k vectors: quality scorers read back single batches' vectors by row number.
    with publish(storage, state_dir(STATE, dt), meta={"encoder": encoder}) as state, \
            state.writer(schema=schema, row_group_size=10_000) as writer:
        writer.write(pa.table({"doc_id": doc_ids, "embedding": vectors}, schema=schema))
