"""Resumable model calls: prompts go to the generator in fixed batches, and each batch's outputs are stored the moment
it completes, under a key of everything that shaped them. A retried task (or a re-run of the date) reads the batches
already stored and calls the model only for the rest: no chunk is paid for twice, and a resumed run gives the same
text as an uninterrupted one, because a batch always holds the same prompts with the same seed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import posixpath
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from dctp_tasks.storage import Storage
from dctp_tasks.synthetic.generators import Generation, Generator

log = logging.getLogger(__name__)

CALL_SCHEMA = pa.schema([("text", pa.string()), ("finish_reason", pa.string()), ("prompt_tokens", pa.int64()),
                         ("completion_tokens", pa.int64())])


@dataclass
class CallStats:
    batches: int = 0
    reused_batches: int = 0
    prompts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    """Seconds spent in the model (batches read back cost none)."""

    def as_dict(self, prefix: str) -> dict[str, float | int]:
        return {f"{prefix}_{k}": (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def batch_key(generator: Generator, settings: dict, prompts: Sequence[list[dict[str, str]]], seed: int) -> str:
    """Return the key of one batch: the model and its version, the decoding settings, the prompts and the seed."""
    payload = json.dumps({"model": generator.identity, "settings": settings, "prompts": list(prompts), "seed": seed},
                         sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def cached_generate(storage: Storage, folder: str, generator: Generator, settings: dict,
                    prompts: list[list[dict[str, str]]], seed: int, batch_size: int,
                    stats: CallStats | None = None) -> list[Generation]:
    """Return one generation per prompt, calling ``generator`` only for the batches ``folder`` does not hold yet.

    Prompts are cut into batches of ``batch_size`` in order; batch ``i`` is seeded with ``seed + i``.
    """
    stats = stats if stats is not None else CallStats()
    out: list[Generation] = []
    for index, start in enumerate(range(0, len(prompts), batch_size)):
        batch = prompts[start:start + batch_size]
        key = batch_key(generator, settings, batch, seed + index)
        path = storage.path(folder, f"{key}.parquet")
        stats.batches += 1
        stats.prompts += len(batch)
        done = _read(storage, path, len(batch))
        if done is None:
            began = time.perf_counter()
            done = generator.generate(batch, seed + index)
            stats.seconds += time.perf_counter() - began
            _write(storage, path, done)
        else:
            stats.reused_batches += 1
        stats.prompt_tokens += sum(g.prompt_tokens for g in done)
        stats.completion_tokens += sum(g.completion_tokens for g in done)
        out.extend(done)
    if stats.reused_batches:
        log.info("%d of %d batches read back from %s: not generated again", stats.reused_batches, stats.batches,
                 storage.uri(folder))
    return out


def _read(storage: Storage, path: str, expected: int) -> list[Generation] | None:
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        return None
    table = pq.read_table(io.BytesIO(data))
    if table.num_rows != expected or table.schema.names != CALL_SCHEMA.names:
        log.warning("stored batch %s holds %d rows, not %d: generating it again", posixpath.basename(path),
                    table.num_rows, expected)
        return None
    return [Generation(**row) for row in table.to_pylist()]


def _write(storage: Storage, path: str, generations: list[Generation]) -> None:
    table = pa.Table.from_pylist([g.__dict__ for g in generations], schema=CALL_SCHEMA)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    storage.write_bytes(path, sink.getvalue())  # whole or not at all: a killed task leaves no half batch
