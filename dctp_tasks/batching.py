"""Token-budget batches for model inference: texts sorted by length, each forward pass filled to a number of padded
tokens, tokenized in a worker thread while the device runs the previous batch.

Every model scorer (sentence embeddings, perplexity, Detoxify) feeds its model through ``token_batches``; its batch
sizes come from ``BatchLimits``, whose ``auto`` values are the CPU's safe sizes on a CPU and sizes derived from free
memory on CUDA.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

Auto = int | Literal["auto"]
AUTO = "auto"
CHUNK_ROWS = 4_096
"""Texts tokenized per call in the worker thread: large enough for the fast tokenizer's own parallelism, small
enough that the first forward pass starts soon and sorting by length within a chunk leaves little padding."""
CUDA_MEMORY_SHARE = 0.25
"""Share of the free CUDA memory one forward pass's activations may take (the rest: weights, the allocator's
cache, the next batch on its way, other processes on the GPU)."""
CUDA_MAX_TOKENS = 1 << 19
"""Upper bound of an ``auto`` token budget on CUDA: past ~500k tokens per pass the GPU is saturated and bigger
batches only delay the first result."""
CUDA_MAX_ROWS = 4_096


@dataclass(frozen=True)
class BatchLimits:
    """How much one forward pass may take: ``rows`` texts and ``tokens`` padded tokens (rows x the longest)."""

    rows: int
    tokens: int

    def __post_init__(self) -> None:
        if self.rows < 1 or self.tokens < 1:
            raise ValueError(f"batch limits must be positive: rows={self.rows}, tokens={self.tokens}")


def resolve_limits(batch_size: Auto, token_budget: Auto, device: str, *, cpu_rows: int, max_length: int,
                   bytes_per_token: int) -> BatchLimits:
    """Return the limits a model runs with: explicit values as given, ``auto`` from the device.

    On the CPU ``auto`` is ``cpu_rows`` texts and ``cpu_rows x max_length`` tokens, the sizes the CPU path has always
    used. On CUDA the token budget is ``CUDA_MEMORY_SHARE`` of the free memory over ``bytes_per_token`` (a model's
    activation estimate, ``activation_bytes``), at most ``CUDA_MAX_TOKENS``, and the rows at most ``CUDA_MAX_ROWS``.
    """
    if device.startswith("cuda"):
        import torch

        free = available_cuda_memory(torch.device(device))
        auto_tokens = int(min(CUDA_MAX_TOKENS, max(max_length, free * CUDA_MEMORY_SHARE // bytes_per_token)))
        auto_rows = CUDA_MAX_ROWS
    else:
        auto_tokens = cpu_rows * max_length
        auto_rows = cpu_rows
    rows = auto_rows if batch_size == AUTO else int(batch_size)
    tokens = auto_tokens if token_budget == AUTO else int(token_budget)
    return BatchLimits(rows=rows, tokens=tokens)


def available_cuda_memory(device: torch.device) -> int:
    """Return the CUDA memory free for new tensors: free on the device plus what torch's cache holds unused.

    The cache is counted as free, so the sizes ``auto`` picks do not shrink after the first batch has filled it.
    """
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def activation_bytes(config: object, max_length: int, dtype_bytes: int) -> int:
    """Return an upper estimate of one token's transient activations in a transformer layer during inference.

    A layer holds its input and output (hidden size each), the attention projections (4 x hidden), the MLP's
    intermediate activations (2 x intermediate, gate and up in gated MLPs) and a row of attention scores per head
    when the attention kernel materialises them; doubled, as two layers' tensors can be alive at once.
    """
    hidden = int(getattr(config, "hidden_size", 768))
    intermediate = int(getattr(config, "intermediate_size", None) or 4 * hidden)
    heads = int(getattr(config, "num_attention_heads", 12))
    return 2 * dtype_bytes * (6 * hidden + 2 * intermediate + heads * max_length)


def plan_batches(lengths: np.ndarray, limits: BatchLimits) -> list[np.ndarray]:
    """Return positions into ``lengths`` grouped into batches, longest first; every position exactly once.

    A batch takes texts while ``rows x its longest length`` stays within ``limits.tokens`` and ``rows`` within
    ``limits.rows``; a text longer than the budget goes alone. Ties keep input order (a stable sort), so the plan is
    deterministic.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches = []
    start = 0
    while start < len(order):
        width = max(int(lengths[order[start]]), 1)  # the longest of the batch: sorted, so its first
        take = max(1, min(limits.rows, limits.tokens // width))
        batches.append(order[start:start + take])
        start += take
    return batches


@dataclass(frozen=True)
class TokenBatch:
    """One forward pass: ``rows`` are positions in the caller's text list, ``features`` the model's inputs
    (``input_ids``, ``attention_mask``, ...) padded on the right to the batch's longest, ``lengths`` real tokens."""

    rows: np.ndarray
    features: dict[str, np.ndarray | object]
    lengths: np.ndarray

    @property
    def tokens(self) -> int:
        """Real (unpadded) tokens in the batch."""
        return int(self.lengths.sum())

    def tensors(self, device: torch.device) -> dict[str, torch.Tensor]:
        """Return the array features as tensors on ``device`` (through pinned memory, asynchronously, on CUDA)."""
        import torch

        out = {}
        for name, value in self.features.items():
            if not isinstance(value, np.ndarray):
                out[name] = value
            elif device.type == "cuda":
                out[name] = torch.from_numpy(value).pin_memory().to(device, non_blocking=True)
            else:
                out[name] = torch.from_numpy(value)
        return out


def pad_right(ids: Sequence[Sequence[int]], pad_id: int) -> dict[str, np.ndarray]:
    """Return ``input_ids`` and ``attention_mask`` of id lists padded on the right to the longest."""
    lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
    width = int(lengths.max()) if len(ids) else 0
    mask = np.arange(width)[None, :] < lengths[:, None]
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    input_ids[mask] = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    return {"input_ids": input_ids, "attention_mask": mask.astype(np.int64)}


def token_batches(count: int, encode: Callable[[range], list[list[int]]], limits: BatchLimits, pad_id: int,
                  chunk_rows: int = CHUNK_ROWS) -> Iterator[TokenBatch]:
    """Yield padded batches covering positions ``0 .. count-1`` exactly once, tokenized ahead in a worker thread.

    ``encode(positions)`` returns the token ids of those positions' texts (truncated as the model needs). An empty
    list of ids is a batch member of length 0: the caller decides what it means.
    """

    def prepare(chunk: range) -> list[TokenBatch]:
        ids = _checked(encode(chunk), chunk)
        lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
        return [TokenBatch(batch + chunk.start, pad_right([ids[i] for i in batch.tolist()], pad_id), lengths[batch])
                for batch in plan_batches(lengths, limits)]

    return _pipelined(count, prepare, chunk_rows)


def feature_batches(count: int, preprocess: Callable[[range], dict], limits: BatchLimits,
                    chunk_rows: int = CHUNK_ROWS) -> Iterator[TokenBatch]:
    """Yield batches as ``token_batches`` does, from a model's own preprocessing of a chunk.

    ``preprocess(positions)`` returns the model's input features for those texts, padded on the right to the
    chunk's longest, with an ``attention_mask`` (a sentence-transformers model's ``preprocess``): each batch takes
    its rows and cuts the padding down to its own longest, so texts are tokenized once, exactly as the model would.
    """

    def prepare(chunk: range) -> list[TokenBatch]:
        features = preprocess(chunk)
        # per-row inputs are sliced per batch; anything else (a modality tag) goes to every batch as it is
        rowwise = {name: np.asarray(value) for name, value in features.items()
                   if getattr(value, "ndim", 0) == 2 and len(value) == len(chunk)}
        mask = _checked(rowwise["attention_mask"], chunk)
        if (np.diff(mask.astype(np.int8), axis=1) > 0).any():  # a mask rising from 0 to 1 along a row: left padding
            raise ValueError("feature_batches needs right padding: the tokenizer pads on the left")
        lengths = mask.sum(axis=1).astype(np.int64)
        out = []
        for batch in plan_batches(lengths, limits):
            width = int(lengths[batch].max(initial=0))
            cut = {**features, **{name: value[batch, :width] for name, value in rowwise.items()}}
            out.append(TokenBatch(batch + chunk.start, cut, lengths[batch]))
        return out

    return _pipelined(count, prepare, chunk_rows)


def _checked(rows, chunk: range):
    if len(rows) != len(chunk):
        raise ValueError(f"the tokenizer returned {len(rows)} rows for {len(chunk)} texts")
    return rows


def _pipelined(count: int, prepare: Callable[[range], list[TokenBatch]], chunk_rows: int) -> Iterator[TokenBatch]:
    """Yield ``prepare(chunk)``'s batches chunk by chunk while a worker thread prepares the next two chunks.

    Chunks of ``chunk_rows`` positions are sorted and cut separately, so the device starts on the first chunk while
    the tokenizer works on the next; fast tokenizers release the GIL, so the two overlap.
    """
    chunks = [range(lo, min(lo + chunk_rows, count)) for lo in range(0, count, chunk_rows)]
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dctp-tokenize")
    try:
        pending = deque(pool.submit(prepare, chunk) for chunk in chunks[:2])
        for chunk in [*chunks[2:], None, None]:
            if not pending:
                break
            batches = pending.popleft().result()
            if chunk is not None:
                pending.append(pool.submit(prepare, chunk))
            yield from batches
    finally:  # a caller that stops early (an error on the device) does not wait for chunks nobody will read
        pool.shutdown(wait=True, cancel_futures=True)
