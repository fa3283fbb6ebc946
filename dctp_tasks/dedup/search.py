"""Range search over L2-normalized float32 rows: every ``(query_row, index_row, cosine)`` with cosine > radius.

Either backend finds candidates a margin below the radius, then every candidate is rescored in float64 and the pairs
come back sorted by (query_row, index_row): faiss flat and torch return identical arrays (faiss IVF may miss pairs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import faiss
    import torch

Backend = Literal["faiss", "torch"]
Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]

QUERY_ROWS = 8_192  # faiss queries per call: bounds the result buffers faiss allocates
RESCORE_PAIRS = 1 << 15  # candidates per float64 rescoring: bounds its two gathered copies (100 MB each at 384 dims)
BLOCK_ELEMENTS = {"cpu": 1 << 26, "cuda": 1 << 28}  # one block's similarity matrix: 256 MB fp32, 512 MB fp16
# On CUDA, rounding the inputs to fp16 moves a unit-row product by up to 2^-10, the fp16 output and the cut (compared
# in fp16) by 2^-11 each, fp32 accumulation by dim * 2^-24: about 2e-3 in all.
FP16_MARGIN = 4e-3


def float32_margin(dim: int) -> float:
    """Return how far a float32 dot product of two unit rows of width ``dim`` can be from the exact one."""
    # Rounding error of a dim-term dot product is at most dim * 2^-24 * sum|a_i b_i| <= dim * 2^-24 for unit rows;
    # twice that covers rows slightly off unit norm after float16 storage.
    return max(1e-5, dim * 2.0**-23)


def resolve_backend(search: str, device: str, nlist: int) -> Backend:
    """Return the backend ``search`` names; ``auto``: torch when the encoder's device is CUDA and ``nlist`` is 0."""
    if search != "auto":
        return "torch" if search == "torch" else "faiss"
    if nlist:
        return "faiss"  # IVF is faiss's
    from dctp_tasks.models import pick_device

    return "torch" if pick_device(device) == "cuda" else "faiss"


class TorchIndex:
    """The index rows held once on the device (fp16 on CUDA, fp32 on the CPU), searched block by block.

    ``half`` overrides the precision (``True``: fp16 on a CPU too, how tests exercise the fp16 margin without a GPU).
    """

    def __init__(self, vectors: np.ndarray, device: str = "auto", block_elements: int | None = None,
                 half: bool | None = None) -> None:
        import torch

        from dctp_tasks.models import pick_device

        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # rescoring reads these, never the copy
        self.device = pick_device(device)
        half = self.device == "cuda" if half is None else half
        self.dtype = torch.float16 if half else torch.float32
        self.margin = FP16_MARGIN if half else float32_margin(self.vectors.shape[1])
        self.block_elements = block_elements or BLOCK_ELEMENTS[self.device]
        self.rows = self._upload(self.vectors)

    def _upload(self, vectors: np.ndarray) -> torch.Tensor:
        import torch

        return torch.from_numpy(vectors).to(self.device, self.dtype)  # no copy for fp32 on the CPU

    def candidates(self, queries: np.ndarray, cut: float) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(query_row, index_row)`` of every pair whose device similarity is > ``cut``."""
        import torch

        n, bound = len(self.vectors), self.block_elements
        if not n or not len(queries):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        # Full index width when the block bound allows it, else square blocks: both keep rows x cols <= bound.
        cols = min(n, max(1, bound // min(len(queries), math.isqrt(bound))))
        step = max(1, bound // cols)
        on_device = self.rows if queries is self.vectors else self._upload(queries)
        found = []
        cuda = self.device == "cuda"
        reduced = cuda and torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction
        if cuda:  # fp16 partial sums in split-K would exceed FP16_MARGIN
            torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
        try:
            with torch.inference_mode():
                for start in range(0, len(queries), step):
                    block, block_hits = on_device[start:start + step], []
                    for first in range(0, n, cols):
                        pairs = torch.nonzero(block @ self.rows[first:first + cols].T > cut)
                        pairs[:, 0] += start
                        pairs[:, 1] += first
                        block_hits.append(pairs)
                    found.append(torch.cat(block_hits).cpu().numpy())  # only the hits leave the device
        finally:
            if cuda:
                torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = reduced
        pairs = np.concatenate(found)
        return pairs[:, 0], pairs[:, 1]


def build_index(vectors: np.ndarray, backend: Backend = "faiss", *, nlist: int = 0, nprobe: int = 8,
                device: str = "auto", block_elements: int | None = None) -> faiss.Index | TorchIndex:
    """Return an index over ``vectors``: faiss flat (IVF when ``nlist`` is set and n >= 39 x nlist), or torch."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if backend == "torch":
        if nlist:
            raise ValueError("the torch search is exact only: nlist (IVF) needs the faiss backend")
        return TorchIndex(vectors, device, block_elements)
    import faiss

    n, dim = vectors.shape
    if nlist and n >= 39 * nlist:  # faiss's minimum training set
        index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = nprobe
        index.add(vectors)
        index.make_direct_map()  # rescoring reads the candidates' vectors back
        return index
    index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    return index


def backend_of(index: faiss.Index | TorchIndex) -> Backend:
    """Return which backend ``index`` belongs to."""
    return "torch" if isinstance(index, TorchIndex) else "faiss"


def range_search(index: faiss.Index | TorchIndex, queries: np.ndarray, radius: float) -> Pairs:
    """Return ``(query_row, index_row, cosine)`` of every pair with float64 cosine > ``radius``, sorted by rows."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if isinstance(index, TorchIndex):
        rows, hits = index.candidates(queries, radius - index.margin)
        return _rescore(queries, rows, hits, radius, lambda hits: index.vectors[hits])
    rows, hits = _faiss_candidates(index, queries, radius - float32_margin(index.d))
    return _rescore(queries, rows, hits, radius, index.reconstruct_batch)


def _faiss_candidates(index: faiss.Index, queries: np.ndarray, cut: float) -> tuple[np.ndarray, np.ndarray]:
    rows, hits = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start in range(0, len(queries), QUERY_ROWS):
        lims, _, found = index.range_search(queries[start:start + QUERY_ROWS], cut)
        rows.append(start + np.repeat(np.arange(len(lims) - 1), np.diff(lims).astype(np.int64)))
        hits.append(found.astype(np.int64))
    return np.concatenate(rows), np.concatenate(hits)


def _rescore(queries: np.ndarray, rows: np.ndarray, hits: np.ndarray, radius: float,
             index_rows: Callable[[np.ndarray], np.ndarray]) -> Pairs:
    # Each pair's float64 cosine depends on its two float32 rows only, so every backend's candidates agree on it.
    keep_rows, keep_hits, keep_cosine = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    for start in range(0, len(rows), RESCORE_PAIRS):
        row, hit = rows[start:start + RESCORE_PAIRS], hits[start:start + RESCORE_PAIRS]
        cosine = np.einsum("ij,ij->i", queries[row].astype(np.float64), index_rows(hit).astype(np.float64))
        above = cosine > radius
        keep_rows.append(row[above])
        keep_hits.append(hit[above])
        keep_cosine.append(cosine[above])
    rows, hits, cosine = np.concatenate(keep_rows), np.concatenate(keep_hits), np.concatenate(keep_cosine)
    order = np.lexsort((hits, rows))
    return rows[order], hits[order], cosine[order].astype(np.float32)
