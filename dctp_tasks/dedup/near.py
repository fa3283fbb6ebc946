"""Near-duplicate dedup: MinHash LSH over word n-grams, within the day and against every earlier date's history.

Reads ``dedup_exact``, publishes ``dedup_near`` and this date's history ``state/minhash/dt=D/{bands,signatures}``
(the day's survivors; both files switch together). Candidates share an LSH band and have estimated Jaccard >=
threshold; clusters are their connected components. History beats today; within the day the earliest
``created_at``, then the smallest ``doc_id`` survives (or the longest text). Only dates before D are read, so
dates can re-run in any order. Banding follows the global threshold; a candidate pair is verified against the
stricter (higher) of its two docs' domain thresholds. The run's report (``reports/dt=D/dedup_near.md``) shows
pairs just above and just below those thresholds.
"""

from __future__ import annotations

import json
import logging
import posixpath
from contextlib import ExitStack, nullcontext

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dctp_tasks.config import NearDedupConfig, PipelineConfig
from dctp_tasks.dedup import minhash
from dctp_tasks.dedup.report import SAMPLE_PAIRS, SamplePair, stage_report
from dctp_tasks.dedup.verdicts import apply_verdicts, row_thresholds, survivor_rank
from dctp_tasks.publish import Publication, earlier_partitions, publish
from dctp_tasks.records import params_hash
from dctp_tasks.shards import Shard, ShardedStage, ShardOutput, iter_shard, plan_shards, publish_shards, shard_stats
from dctp_tasks.staging import ROWS, stage_rows
from dctp_tasks.stats import StageResult, Timer
from dctp_tasks.storage import Storage, staging_dir, state_dir
from dctp_tasks.workers import process_pool, worker_count

log = logging.getLogger(__name__)

STAGE = "dedup_near"
INPUT_STAGE = "dedup_exact"
STATE = "minhash"
#: One row per surviving doc and band, sorted by ``band_hash``; ``doc`` numbers the row in ``signatures``.
BANDS_SCHEMA = pa.schema([("band_hash", pa.uint64()), ("doc", pa.uint32())])
_LATEST = pa.scalar(np.iinfo(np.int64).max, pa.int64())
#: Day sizes from which worker processes pay for their start (≈ 0.15 s) per shingle hash.
_POOL_MIN_ROWS = {"sha1": 5_000, "words64": 50_000}
_SIGNING_KEY = "dctp.minhash.signing"
_SCAN_ROWS = 1_048_576  # history band rows matched at a time (12 MB)
_SIGNATURE_GROUP = 4_096  # signature rows per row group: a lookup reads only the groups holding a match
REPORT_MARGIN = 0.15  # rejected candidates this far below their threshold are sampled for the report
_WORK = "_work"  # inside the version the shards build: signatures, band hashes by range, pairs; deleted once published
_ROW = pa.field("row", pa.int64())
_PAIRS_SCHEMA = pa.schema([("hist", pa.string()), ("u", pa.int64()), ("v", pa.int64()), ("estimate", pa.float64()),
                           ("threshold", pa.float64())])


def signing(cfg: NearDedupConfig) -> dict:
    """Return the settings that make a signature: history signed otherwise can never match today's."""
    return {"ngram": cfg.ngram, "num_perm": cfg.num_perm, "seed": cfg.seed, "scheme": cfg.scheme, "hash": cfg.hash}


def signatures_schema(cfg: NearDedupConfig) -> pa.Schema:
    """Return the schema of ``state/minhash/dt=D/signatures``; its metadata records how they were signed."""
    return pa.schema([("doc_id", pa.string()), ("signature", pa.binary(4 * cfg.num_perm)), ("domain", pa.string())],
                     metadata={_SIGNING_KEY: json.dumps(signing(cfg), sort_keys=True)})


def _signed_schema(cfg: NearDedupConfig) -> pa.Schema:
    return pa.schema([("doc_id", pa.string()), ("created", pa.int64()), ("length", pa.int64()),
                      ("domain", pa.string()), ("signature", pa.binary(4 * cfg.num_perm))])


def _sig_array(sigs: np.ndarray, cfg: NearDedupConfig) -> pa.FixedSizeBinaryArray:
    data = np.ascontiguousarray(sigs, dtype="<u4")
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(4 * cfg.num_perm), len(data),
                                                [None, pa.py_buffer(data.tobytes())])


def lsh_params(cfg: NearDedupConfig) -> tuple[int, int]:
    """Return ``(bands, rows)``: the configured pair, or the optimum for ``cfg.threshold``."""
    if cfg.bands is not None and cfg.rows is not None:
        return cfg.bands, cfg.rows
    return minhash.optimal_bands(cfg.threshold, cfg.num_perm, cfg.false_positive_weight, cfg.false_negative_weight)


def dedup_near_day(storage: Storage, config: PipelineConfig, dag_id: str, dt: str, *,
                   input_stage: str = INPUT_STAGE, input_version: str | None = None) -> StageResult:
    """Drop near duplicates of date ``dt``; return counts (``dropped_near_duplicate``)."""
    return NEAR.run_all(storage, config, dag_id, dt, input_stage=input_stage, input_version=input_version)


def plan_near(storage: Storage, config: PipelineConfig, dag_id: str, dt: str, *, input_stage: str = INPUT_STAGE,
              input_version: str | None = None) -> list[Shard]:
    """Split the day into shards (``sharding.shards.dedup_near``): each signs its rows, then searches one range of
    band hashes."""
    cfg = config.dedup_near
    bands, rows = lsh_params(cfg)
    log.info("dedup_near dt=%s: threshold %.2f, %d-word shingles, %d perms (%s, seed %d) -> LSH %d bands x %d rows",
             dt, cfg.threshold, cfg.ngram, cfg.num_perm, cfg.scheme, cfg.seed, bands, rows)
    return plan_shards(storage, config, dag_id, dt, STAGE, input_stage=input_stage, input_version=input_version)


def sign_shard(storage: Storage, config: PipelineConfig, shard: Shard) -> dict:
    """Sign the shard's rows; file each band hash under the search shard that owns its range."""
    cfg = config.dedup_near
    bands, rows = lsh_params(cfg)
    workers = worker_count(cfg.workers)
    big = workers > 1 and shard.stop - shard.start >= _POOL_MIN_ROWS[cfg.hash]
    out = ShardOutput(storage, shard, "sign")
    signed = out.writer(_WORK, "signed", schema=_signed_schema(cfg), compression={
        "doc_id": "zstd", "created": "zstd", "length": "zstd", "domain": "zstd", "signature": "none"})
    by_range = [out.writer(_WORK, "bands", f"r={r:05d}", schema=BANDS_SCHEMA.remove(1).append(_ROW),
                           compression="none") for r in range(shard.count)]
    row = shard.start
    with Timer() as timer, process_pool(workers) if big else nullcontext() as pool, ExitStack() as open_files:
        for writer in (signed, *by_range):
            open_files.enter_context(writer)
        for batch in iter_shard(storage, shard, batch_size=config.batch_size,
                                columns=["doc_id", "text", "created_at", "domain"]):
            texts = batch.column("text")
            sigs = minhash.text_signatures(texts, cfg.ngram, cfg.num_perm, cfg.seed, cfg.scheme, pool, workers,
                                           cfg.hash)
            created = pc.fill_null(pc.cast(batch.column("created_at"), pa.int64()), _LATEST)  # undated rows lose
            signed.write(pa.table({"doc_id": batch.column("doc_id"), "created": created,
                                   "length": pc.cast(pc.fill_null(pc.utf8_length(texts), 0), pa.int64()),
                                   "domain": batch.column("domain"), "signature": _sig_array(sigs, cfg)}))
            has_shingles = sigs[:, 0] != minhash.MAX_HASH32  # a slot only stays at max when there are no shingles
            keys = minhash.band_keys(sigs[has_shingles], bands, rows)
            numbers = np.repeat(row + np.flatnonzero(has_shingles), bands)
            flat = keys.ravel()
            owner = key_range(flat, shard.count)
            for r in np.unique(owner).tolist():
                mine = owner == r
                by_range[r].write(pa.table({"band_hash": flat[mine], "row": numbers[mine]}))
            row += batch.num_rows
    return out.done({"rows": row - shard.start, "seconds": timer.seconds})


def search_shard(storage: Storage, config: PipelineConfig, shard: Shard) -> dict:
    """Find and score the candidate pairs of the band hashes in this shard's range: within the day and against
    the history rows whose band hashes fall in it (only the row groups whose min/max overlap the range are read).
    """
    cfg = config.dedup_near
    work = posixpath.join(shard.output(), _WORK)
    out = ShardOutput(storage, shard, "search")
    with Timer() as timer:
        signed = storage.read_table(work, "signed", columns=["doc_id", "created", "length", "domain"])
        rank = survivor_rank(signed.column("doc_id").combine_chunks(), signed.column("created").to_numpy(),
                             signed.column("length").to_numpy(), cfg.survivor)
        thresholds = _thresholds(signed.column("domain").combine_chunks(), cfg)
        mine = storage.read_table(work, "bands", f"r={shard.index:05d}")
        keys, rows = mine.column("band_hash").to_numpy(), mine.column("row").to_numpy()
        lo, hi = range_bounds(shard.index, shard.count)
        history = history_matches(storage, shard.dt, keys, cfg, key_range=(lo, hi))
        pairs, hist_nodes = _candidates(storage, work, keys, rows, rank, thresholds, history, cfg)
        with out.writer(_WORK, "pairs", schema=_PAIRS_SCHEMA) as writer:
            writer.write(pairs)
        with out.writer(_WORK, "history", schema=hist_nodes.schema) as writer:
            writer.write(hist_nodes)
    return out.done({"candidates": pairs.num_rows, "history_docs": hist_nodes.num_rows, "seconds": timer.seconds})


def finish_near(storage: Storage, config: PipelineConfig, shards: list[Shard]) -> StageResult:
    """Link every shard's verified pairs into clusters, keep each cluster's best doc, publish survivors and the
    date's history, and report."""
    cfg = config.dedup_near
    bands, rows = lsh_params(cfg)
    first = shards[0]
    dag_id, dt = first.dag_id, first.dt
    work = posixpath.join(first.output(), _WORK)
    signed_stats = shard_stats(storage, shards, "sign")
    search_stats = shard_stats(storage, shards, "search")
    in_dir = first.input(storage)
    step_params = params_hash({**cfg.model_dump(mode="json"), "bands": bands, "rows": rows})
    with Timer() as timer:
        signed = storage.read_table(work, "signed")
        doc_ids = signed.column("doc_id").combine_chunks()
        domains = signed.column("domain").combine_chunks()
        rank = survivor_rank(doc_ids, signed.column("created").to_numpy(), signed.column("length").to_numpy(),
                             cfg.survivor)
        sigs = _sig_matrix(signed.column("signature"), cfg.num_perm)
        has_shingles = sigs[:, 0] != minhash.MAX_HASH32
        verdicts = _cluster(doc_ids, rank, sigs, storage.read_table(work, "pairs"),
                            storage.read_table(work, "history"), cfg)
        survives = (verdicts["position"] < 0) & has_shingles
        _write_state(storage, dt, doc_ids, domains, sigs, minhash.band_keys(sigs, bands, rows), survives, cfg)
        out = Publication(storage, staging_dir(dag_id, dt, STAGE), token=first.version)
        applied = apply_verdicts(storage, dt, STAGE, "near_duplicate", in_dir, out,
                                 position=verdicts["position"], duplicate_of=verdicts["duplicate_of"],
                                 detail=verdicts["detail"], step_params=step_params, batch_size=config.batch_size)
        publish_shards(storage, shards)
        storage.delete_dir(work)
        report = stage_report(
            storage, STAGE, dt, in_dir, lambda day: stage_rows(storage, dag_id, day, STAGE),
            method=f"MinHash LSH over {cfg.ngram}-word shingles, {cfg.num_perm} permutations, {bands} bands x {rows} "
                   "rows (banded at the global threshold)",
            measure="estimated Jaccard", thresholds=_describe(cfg), clusters=verdicts["clusters"], rates=applied.rates,
            pairs=verdicts["samples"])
    result = StageResult(STAGE, storage.uri(out.sub(ROWS)), total=applied.total, kept=applied.kept,
                         version=out.version)
    result.seconds = timer.seconds + sum(s["seconds"] for s in signed_stats + search_stats)
    result.dropped_by_reason = applied.dropped_by_reason
    result.extra = {"duplicates_of_history": verdicts["of_history"], "candidate_pairs": verdicts["candidates"],
                    "verified_pairs": verdicts["verified"], "clusters": verdicts["clusters"],
                    "lsh_bands": bands, "lsh_rows": rows, "state_rows": int(survives.sum()), "report": report,
                    "shards": len(shards)}
    log.info("dedup_near dt=%s: %d in, %d kept, %d near duplicates (%d of earlier dates), %d candidate pairs, "
             "%d verified, %d shard(s)", dt, result.total, result.kept, result.dropped, verdicts["of_history"],
             verdicts["candidates"], verdicts["verified"], len(shards))
    return result


NEAR = ShardedStage(plan_near, {"sign": sign_shard, "search": search_shard}, finish_near)


def key_range(keys: np.ndarray, count: int) -> np.ndarray:
    """Return which of ``count`` equal ranges of the 64-bit hash space each key falls in."""
    return ((keys >> np.uint64(32)) * np.uint64(count) >> np.uint64(32)).astype(np.int64)


def range_bounds(index: int, count: int) -> tuple[int, int]:
    """Return the smallest and largest 64-bit key of range ``index`` of ``count`` (as ``key_range`` cuts them)."""
    def first(r: int) -> int:  # the smallest high word h with h * count >> 32 == r
        return -(-(r << 32) // count) << 32

    return first(index), (first(index + 1) if index + 1 < count else 1 << 64) - 1


def _describe(cfg: NearDedupConfig) -> str:
    domains = ", ".join(f"{name} {value:.2f}" for name, value in sorted(cfg.domain_thresholds.items()))
    return f"{cfg.threshold:.2f}" + (f"; per domain: {domains} (a pair uses the higher of its two docs')"
                                     if domains else "")


def _thresholds(domains: pa.Array, cfg: NearDedupConfig) -> np.ndarray:
    """Return each row's verification threshold: its domain's, or the global one."""
    return row_thresholds(domains, cfg.threshold, cfg.domain_thresholds)


def history_matches(storage: Storage, dt: str, keys: np.ndarray, cfg: NearDedupConfig, *,
                    inclusive: bool = False, key_range: tuple[int, int] | None = None) -> pa.Table:
    """Scan history before ``dt`` (``inclusive``: and of ``dt`` itself) for the band hashes ``keys``; return
    ``doc_id, band_hash, signature, domain, dt`` of every stored document sharing one.

    Each date's ``bands`` are sorted by hash, so a batch is matched by binary-searching the slice of today's sorted
    keys that falls in its range; then only the signature row groups holding a matched doc are read. Memory holds
    today's keys, one batch and the matches, however long the history. With ``key_range`` (a search shard's
    ``(lowest, highest)`` hash), only the row groups whose min/max overlap it are read.
    """
    wanted = np.unique(keys.ravel())
    found = []
    for day, folder in earlier_partitions(storage, state_dir(STATE), dt, inclusive=inclusive):
        _check_layout(storage, day, folder, cfg)
        hashes, docs = [], []
        for batch in storage.iter_batches(folder, "bands", batch_size=_SCAN_ROWS,
                                          overlapping=("band_hash", *key_range) if key_range else None):
            hit_hashes, hit_docs = _match_sorted(wanted, batch.column("band_hash").to_numpy(),
                                                 batch.column("doc").to_numpy())
            hashes.append(hit_hashes)
            docs.append(hit_docs)
        docs = np.concatenate(docs) if docs else np.zeros(0, np.uint32)
        if not len(docs):
            continue
        needed, row = np.unique(docs, return_inverse=True)
        signatures = storage.take_rows(folder, "signatures", rows=needed.astype(np.int64),
                                       columns=["doc_id", "signature", "domain"]).take(pa.array(row))
        found.append(_with_dt(signatures.add_column(1, "band_hash", pa.array(np.concatenate(hashes))), day))
    if not found:
        return pa.table({"doc_id": pa.array([], pa.string()), "band_hash": pa.array([], pa.uint64()),
                         "signature": pa.array([], pa.binary(4 * cfg.num_perm)), "domain": pa.array([], pa.string()),
                         "dt": pa.array([], pa.string())})
    return pa.concat_tables(found)


def _check_layout(storage: Storage, day: str, folder: str, cfg: NearDedupConfig) -> None:
    """Refuse history that cannot be matched: silently matching nothing would hide every duplicate."""
    schema = storage.parquet_schema(folder, "signatures")
    stored = schema.field("signature").type
    if stored != pa.binary(4 * cfg.num_perm):
        raise ValueError(f"history state/{STATE}/dt={day} holds {stored} signatures; "
                         f"dedup_near.num_perm={cfg.num_perm} needs fixed_size_binary[{4 * cfg.num_perm}]")
    recorded = (schema.metadata or {}).get(_SIGNING_KEY.encode())
    if recorded is None or storage.parquet_schema(folder, "bands").names != BANDS_SCHEMA.names:
        raise ValueError(f"history state/{STATE}/dt={day} has an older layout; re-run dedup_near for {day} "
                         "to rewrite it")
    changed = {k: (v, getattr(cfg, k)) for k, v in json.loads(recorded).items() if v != getattr(cfg, k)}
    if changed:
        described = ", ".join(f"{k}={then!r} (now {now!r})" for k, (then, now) in sorted(changed.items()))
        raise ValueError(f"history state/{STATE}/dt={day} was signed with {described}: its signatures cannot match "
                         f"today's. Restore those dedup_near settings, or re-run dedup_near for every date from the "
                         f"first one in order to rebuild the history")


def _match_sorted(wanted: np.ndarray, hashes: np.ndarray, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the ``(band_hash, doc)`` rows of a history batch whose hash is in ``wanted`` (both sorted)."""
    if not len(hashes) or not len(wanted):
        return hashes[:0], docs[:0]
    if len(hashes) > 1 and (hashes[1:] < hashes[:-1]).any():  # written sorted; stay correct if not
        order = np.argsort(hashes, kind="stable")
        hashes, docs = hashes[order], docs[order]
    lo, hi = np.searchsorted(wanted, [hashes[0], hashes[-1]], side="left")
    query = wanted[lo:hi + 1]  # today's keys inside this batch's range (hi + 1 keeps a key equal to the last)
    left = np.searchsorted(hashes, query, side="left")
    counts = np.searchsorted(hashes, query, side="right") - left
    rows = np.repeat(left, counts) + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return hashes[rows], docs[rows]


def _with_dt(table: pa.Table, day: str) -> pa.Table:
    return table.append_column("dt", pa.array([day] * table.num_rows, pa.string()))


def _sig_matrix(column: pa.Array | pa.ChunkedArray, num_perm: int) -> np.ndarray:
    """Return fixed-width binary signatures as a ``(rows, num_perm)`` uint32 matrix."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    flat = np.frombuffer(arr.buffers()[1], dtype="<u4")
    return flat[arr.offset * num_perm:(arr.offset + len(arr)) * num_perm].reshape(len(arr), num_perm)


def _candidates(storage: Storage, work: str, keys: np.ndarray, rows: np.ndarray, rank: np.ndarray,
                thresholds: np.ndarray, history: pa.Table, cfg: NearDedupConfig) -> tuple[pa.Table, pa.Table]:
    """Return a range's candidate pairs with their estimated Jaccard and threshold, and the history docs they name.

    A pair is ``(hist, u, v)``: ``u`` and ``v`` are today's survivor ranks (``u`` is -1 when the other doc is the
    history doc ``hist``, ``"dt|doc_id"``). ``keys``/``rows`` are today's band hashes in the range and their rows.
    """
    nodes = rank[rows]
    # Within the day: docs sharing a band key (a bucket never spans two ranges, so none is split).
    u, v = minhash.bucket_pairs(keys, nodes, cfg.bucket_window)
    # Against history: every today doc whose band key a history doc shares.
    hist_keys = pc.binary_join_element_wise(history.column("dt"), history.column("doc_id"), "|")
    hist_keys = hist_keys.combine_chunks() if isinstance(hist_keys, pa.ChunkedArray) else hist_keys
    names = pc.unique(hist_keys)
    names = names.take(pc.array_sort_indices(names))
    row_node = pc.index_in(hist_keys, value_set=names).to_numpy(zero_copy_only=False).astype(np.int64)
    order = np.argsort(keys, kind="stable")
    sorted_keys, sorted_nodes = keys[order], nodes[order]
    hkeys = history.column("band_hash").to_numpy()
    left = np.searchsorted(sorted_keys, hkeys, side="left")
    counts = np.searchsorted(sorted_keys, hkeys, side="right") - left
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    hu, hv = np.repeat(row_node, counts), sorted_nodes[np.repeat(left, counts) + within]
    if len(hu):
        pairs = np.unique(np.stack([hu, hv], axis=1), axis=0)
        hu, hv = pairs[:, 0], pairs[:, 1]
    # Signatures and thresholds of every node named: today's by rank, history's by name.
    by_rank = np.empty(len(rank), dtype=np.int64)
    by_rank[rank] = np.arange(len(rank))
    needed = np.unique(by_rank[np.concatenate([u, v, hv])])
    today = _sig_matrix(storage.take_rows(work, "signed", rows=needed, columns=["signature"]).column("signature"),
                        cfg.num_perm)
    def today_sigs(ranks: np.ndarray) -> np.ndarray:
        return today[np.searchsorted(needed, by_rank[ranks])]

    first = np.unique(row_node, return_index=True)[1] if len(row_node) else np.zeros(0, np.int64)
    hist_sigs = _sig_matrix(history.column("signature").take(pa.array(first)), cfg.num_perm)
    hist_domains = history.column("domain").take(pa.array(first)).combine_chunks()
    hist_thresholds = _thresholds(hist_domains, cfg) if len(first) else np.zeros(0)
    estimate = np.concatenate([(today_sigs(u) == today_sigs(v)).mean(axis=1) if len(u) else np.zeros(0),
                               (hist_sigs[hu] == today_sigs(hv)).mean(axis=1) if len(hu) else np.zeros(0)])
    threshold = np.concatenate([np.maximum(thresholds[by_rank[u]], thresholds[by_rank[v]]),
                                np.maximum(hist_thresholds[hu], thresholds[by_rank[hv]])])
    pairs = pa.table({"hist": pa.concat_arrays([pa.nulls(len(u), pa.string()), names.take(pa.array(hu))]),
                      "u": np.concatenate([u, np.full(len(hu), -1)]).astype(np.int64),
                      "v": np.concatenate([v, hv]).astype(np.int64),
                      "estimate": estimate, "threshold": threshold}, schema=_PAIRS_SCHEMA)
    hist_nodes = pa.table({"name": names, "signature": history.column("signature").take(pa.array(first)),
                           "domain": hist_domains})
    return pairs, hist_nodes


def _cluster(doc_ids: pa.Array, rank: np.ndarray, sigs: np.ndarray, pairs: pa.Table, hist_nodes: pa.Table,
             cfg: NearDedupConfig) -> dict:
    """Link the candidates with estimated Jaccard >= the higher of their two thresholds; each row's survivor is
    its component's best node.

    Nodes are numbered best first: history docs (by dt, doc_id), then today's rows by rank, so a component's
    smallest node id is its survivor. ``pairs`` come from every search shard; a pair two ranges found counts once.
    """
    all_names = hist_nodes.column("name").combine_chunks()
    names = pc.unique(all_names)
    names = names.take(pc.array_sort_indices(names))
    h, n = len(names), len(rank)
    first = np.unique(pc.index_in(all_names, value_set=names).to_numpy(zero_copy_only=False),
                      return_index=True)[1] if len(all_names) else np.zeros(0, np.int64)
    node_sigs = np.empty((h + n, cfg.num_perm), dtype=np.uint32)
    node_sigs[:h] = _sig_matrix(hist_nodes.column("signature").take(pa.array(first)), cfg.num_perm)
    node_sigs[h + rank] = sigs
    is_hist = pc.is_valid(pairs.column("hist")).to_numpy(zero_copy_only=False)
    hist_node = pc.fill_null(pc.index_in(pairs.column("hist"), value_set=names), 0).to_numpy()
    u = np.where(is_hist, hist_node, h + pairs.column("u").to_numpy())
    v = h + pairs.column("v").to_numpy()
    lo, hi = np.minimum(u, v), np.maximum(u, v)
    if len(lo):
        _, once = np.unique(np.stack([lo, hi], axis=1), axis=0, return_index=True)
    else:
        once = np.zeros(0, np.int64)
    u, v = lo[once], hi[once]
    estimate = pairs.column("estimate").to_numpy()[once]
    pair_threshold = pairs.column("threshold").to_numpy()[once]
    similar = estimate >= pair_threshold
    labels = minhash.connected_components(h + n, u[similar], v[similar])
    nodes = h + rank
    winners = labels[nodes]
    dup_rows = np.flatnonzero(winners != nodes)
    position = np.full(n, -1, dtype=np.int64)
    position[dup_rows] = np.arange(len(dup_rows))
    winner = winners[dup_rows]
    jaccard = minhash.estimated_jaccard(node_sigs, nodes[dup_rows], winner)
    of_history = winner < h
    by_rank = np.empty(n, dtype=np.int64)
    by_rank[rank] = np.arange(n)
    hist_names = names.to_pylist()
    samples = _samples(estimate, pair_threshold, u, v, h, hist_names, doc_ids, by_rank)
    today_ids = doc_ids.take(pa.array(by_rank[np.maximum(winner - h, 0)])).to_pylist() if n else []
    duplicate_of, detail = [], []
    for i, w in enumerate(winner.tolist()):
        if w < h:
            day, doc = hist_names[w].split("|", 1)
            duplicate_of.append(doc)
            detail.append(f"minhash jaccard≈{jaccard[i]:.2f} (history dt={day})")
        else:
            duplicate_of.append(today_ids[i])
            detail.append(f"minhash jaccard≈{jaccard[i]:.2f} (same day)")
    return {"position": position, "duplicate_of": pa.array(duplicate_of, pa.string()),
            "detail": pa.array(detail, pa.string()), "of_history": int(of_history.sum()),
            "candidates": len(u), "verified": int(similar.sum()), "clusters": int(len(np.unique(winner))),
            "samples": samples}


def _samples(estimate: np.ndarray, threshold: np.ndarray, u: np.ndarray, v: np.ndarray, h: int,
             hist_names: list[str], doc_ids: pa.Array, by_rank: np.ndarray) -> list[SamplePair]:
    """Return the candidate pairs nearest their threshold: merged ones, and rejected ones within the margin.

    ``v`` is always one of today's nodes (history is never paired with history); ``u`` may be a history node.
    """
    picked = []
    for side in (estimate >= threshold, (estimate < threshold) & (estimate >= threshold - REPORT_MARGIN)):
        rows = np.flatnonzero(side)
        order = np.lexsort((v[rows], u[rows], np.abs(estimate[rows] - threshold[rows])))
        picked.extend(rows[order[:SAMPLE_PAIRS]].tolist())
    out = []
    for i in picked:
        doc = doc_ids[int(by_rank[v[i] - h])].as_py()
        if u[i] < h:
            other_dt, other = hist_names[u[i]].split("|", 1)
        else:
            other_dt, other = None, doc_ids[int(by_rank[u[i] - h])].as_py()
        out.append(SamplePair(round(float(estimate[i]), 4), float(threshold[i]), doc, other, other_dt))
    return out


def _write_state(storage: Storage, dt: str, doc_ids: pa.Array, domains: pa.Array, sigs: np.ndarray,
                 keys: np.ndarray, survives: np.ndarray, cfg: NearDedupConfig) -> None:
    """Write the day's surviving signatures and band hashes: the history later dates deduplicate against.

    ``bands`` hold ``(band_hash, doc)`` sorted by hash, ``doc`` being the row number in ``signatures``: a doc's
    string id is stored once, not once per band. Hashes and signatures are random bits, so they stay uncompressed.
    """
    ids = doc_ids.filter(pa.array(survives))
    bands = keys.shape[1]
    signature = _sig_array(sigs[survives], cfg)
    schema = signatures_schema(cfg)
    flat = keys[survives].ravel()
    order = np.argsort(flat, kind="stable")
    docs = (order // bands).astype(np.uint32)
    with publish(storage, state_dir(STATE, dt)) as state:
        with state.writer("signatures", schema=schema, row_group_size=_SIGNATURE_GROUP,
                          compression={"doc_id": "zstd", "signature": "none", "domain": "zstd"}) as writer:
            writer.write(pa.table({"doc_id": ids, "signature": signature,
                                   "domain": domains.filter(pa.array(survives))}, schema=schema))
        with state.writer("bands", schema=BANDS_SCHEMA, row_group_size=_SCAN_ROWS, compression="none") as writer:
            writer.write(pa.table({"band_hash": pa.array(flat[order]), "doc": pa.array(docs)}, schema=BANDS_SCHEMA))
