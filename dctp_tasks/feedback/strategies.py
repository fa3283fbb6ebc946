"""Active-learning strategies as pure NumPy functions: informativeness scores are float64 ``(n,)``, higher = more
informative, NaN where the input is missing (semantics of small-text, webis-de/small-text); plus committees, core-set
selection, and how a labeling budget is picked (``top_k``, ``random_pick``) and split across strata (``allocate``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

PROBABILITY_EPS = 1e-12
"""Probabilities are clipped to ``[eps, 1]`` (and renormalised) before a log: KL of a confident member stays finite."""
ALLOCATION_MODES = ("proportional", "equal")
_BOOTSTRAP_ATTEMPTS = 20
"""Resamples drawn per member before falling back to the whole labeled set: with >= 2 of each class a resample
misses one with probability <= e^-2 ~ 0.14, so 20 failures in a row (~1e-17) means something else is wrong."""
_PREDICT_ROWS = 16_384
"""Pool rows per chunk when a committee member scores the pool: a float16 pool of 1M rows is never copied whole."""
_CENTER_BLOCK = 256
"""Already-chosen centers per block in ``k_center_greedy``'s first pass: a (chunk_rows, block) matrix at a time."""


def least_confidence(p: np.ndarray) -> np.ndarray:
    """Return ``1 - max class probability`` per row of ``p``: (n,) P(positive) of a binary classifier, or (n, k)."""
    return 1.0 - _class_probs(p, "least_confidence").max(axis=1)


def margin(p: np.ndarray) -> np.ndarray:
    """Return ``1 - (top1 - top2)`` per row: 1.0 for a binary p = 0.5, 0.0 for a certain prediction."""
    probs = _class_probs(p, "margin")
    top = np.partition(probs, probs.shape[1] - 2, axis=1)[:, -2:]
    out = 1.0 - (top[:, 1] - top[:, 0])
    out[np.isnan(probs).any(axis=1)] = np.nan  # np.partition sorts NaN last: a row's top2 could look defined
    return out


def entropy(p: np.ndarray) -> np.ndarray:
    """Return the Shannon entropy (natural log) of each row's class distribution; a binary row's maximum is ln 2."""
    return 0.0 - _xlogx(_class_probs(p, "entropy")).sum(axis=1)  # 0.0 - x: a certain row gives 0.0, not -0.0


def closeness(values: np.ndarray, line: float, spread: float | None = None) -> np.ndarray:
    """Return how close ``values`` (e.g. composite quality in [0, 1]) lie to the decision ``line``.

    ``spread=None``: ``1 - |v - line|``; else the Gaussian ``exp(-(v - line)^2 / (2 spread^2))``, which keeps
    ordering far from the line where a clipped linear score would tie. NaN stays NaN.
    """
    if not np.isfinite(line):
        raise ValueError(f"closeness: line must be a finite number, got {line!r}")
    distance = np.abs(np.asarray(values, dtype=np.float64) - float(line))
    if spread is None:
        return 1.0 - distance
    if not (np.isfinite(spread) and spread > 0):
        raise ValueError(f"closeness: spread must be a positive number, got {spread!r}")
    return np.exp(-0.5 * (distance / float(spread)) ** 2)


def vote_entropy(votes: np.ndarray) -> np.ndarray:
    """Return the entropy of the share of pass votes per row of ``votes`` ((n, m) of 0/1, NaN = abstained).

    0 when the members who voted agree, ln 2 on a 50/50 split, NaN where nobody voted.
    """
    v = np.asarray(votes, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"vote_entropy: votes must be (n, members), got shape {v.shape}")
    bad = ~np.isnan(v) & (v != 0) & (v != 1)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"vote_entropy: votes must be 0, 1 or NaN; votes[{row}, {col}] = {float(v[row, col])!r}")
    voted = (~np.isnan(v)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.nansum(v, axis=1) / voted
    return 0.0 - (_xlogx(share) + _xlogx(1.0 - share))


def kl_to_mean(probs: np.ndarray) -> np.ndarray:
    """Return, per doc, the members' mean KL divergence to the committee's mean distribution (McCallum & Nigam).

    ``probs``: (members, n) P(positive) or (members, n, k). A member with NaN for a doc abstains on it; NaN where
    every member abstains.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim not in (2, 3) or (p.ndim == 3 and p.shape[2] < 2) or p.shape[0] < 1:
        raise ValueError(f"kl_to_mean: probs must be (members, n) or (members, n, k >= 2), got shape {p.shape}")
    _check_probabilities(p, "kl_to_mean")
    if p.ndim == 2:
        p = np.stack([1.0 - p, p], axis=-1)
    valid = ~np.isnan(p).any(axis=2)
    p = np.clip(p, PROBABILITY_EPS, 1.0)
    p = p / p.sum(axis=2, keepdims=True)
    voting = np.where(valid[..., None], p, 0.0)
    members = valid.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = voting.sum(axis=0) / members[:, None]
        kl = (voting * (np.log(np.where(valid[..., None], p, 1.0)) - np.log(mean))).sum(axis=2)
        out = kl.sum(axis=0) / members
    return np.maximum(out, 0.0)  # rounding can leave -1e-17 for a unanimous committee; NaN passes through


def logistic_regression(c: float = 1.0) -> LogisticRegression:
    """Return an unfitted scikit-learn ``LogisticRegression`` with the settings of ``fit_classifier``
    (``dctp train-scorer``): L2 strength ``C=c``, balanced class weights, ``max_iter=2000``."""
    from dctp_tasks.quality import classifier  # imported here: this module stays NumPy only until a model is fit

    return classifier.logistic_regression(c)


def bootstrap_committee(labeled_vectors: np.ndarray, y: np.ndarray, pool_vectors: np.ndarray, members: int = 5,
                        seed: int | np.random.Generator = 0, c: float = 1.0) -> np.ndarray:
    """Return (members, n_pool) P(positive) of ``members`` logistic regressions, each fitted on a bootstrap resample
    of the labeled rows (0/1 ``y``); a resample lacking a class is redrawn, after 20 tries the full set is used."""
    x = np.asarray(labeled_vectors)
    y = np.asarray(y)
    pool = np.asarray(pool_vectors)
    if x.ndim != 2 or pool.ndim != 2 or x.shape[1] != pool.shape[1]:
        raise ValueError(f"bootstrap_committee: labeled {x.shape} and pool {pool.shape} must be 2-d with the same "
                         "width")
    if y.shape != (len(x),):
        raise ValueError(f"bootstrap_committee: y has shape {y.shape}, expected ({len(x)},) like labeled_vectors")
    if members < 1:
        raise ValueError(f"bootstrap_committee: members must be at least 1, got {members}")
    if len(y) and not np.isin(y, (0, 1)).all():
        raise ValueError(f"bootstrap_committee: y must be 0/1, found {np.unique(y)[:10].tolist()}")
    y = y.astype(np.int64)
    counts = np.bincount(y, minlength=2)
    if counts.min() < 2:
        raise ValueError(f"bootstrap_committee: y holds {counts[1]} positive and {counts[0]} negative labels; a "
                         "committee needs at least 2 of each")
    rng = _rng(seed)
    out = np.empty((members, len(pool)), dtype=np.float64)
    for member in range(members):
        rows = _bootstrap_rows(y, rng)
        model = logistic_regression(c).fit(x[rows], y[rows])
        out[member] = _positive_probability(model, pool)
    return out


def k_center_greedy(vectors: np.ndarray, k: int, centers: np.ndarray | None = None, *,
                    chunk_rows: int = 32_768) -> np.ndarray:
    """Return the indices (int64, in selection order) of ``k`` rows picked by greedy k-center (Sener & Savarese).

    Each pick is the row with the largest Euclidean distance to its nearest center; ``centers`` (c, d) (e.g. the
    labeled docs) count as centers already. With none, the first pick is the row farthest from the rows' mean
    (ties: lowest index). ``k >= n`` returns every index in row order. Memory is one (n,) running minimum plus
    float32 chunks of ``chunk_rows`` rows: never an n x n matrix; time O(n k d).
    """
    x = np.asarray(vectors)
    if x.ndim != 2:
        raise ValueError(f"k_center_greedy: vectors must be (n, d), got shape {x.shape}")
    if k < 0:
        raise ValueError(f"k_center_greedy: k must be >= 0, got {k}")
    if chunk_rows < 1:
        raise ValueError(f"k_center_greedy: chunk_rows must be >= 1, got {chunk_rows}")
    n, d = x.shape
    if k >= n:
        return np.arange(n, dtype=np.int64)
    if k == 0:
        return np.empty(0, dtype=np.int64)
    chunks = [slice(lo, min(lo + chunk_rows, n)) for lo in range(0, n, chunk_rows)]
    norms = np.empty(n, dtype=np.float32)
    for rows in chunks:
        block = x[rows].astype(np.float32, copy=False)
        norms[rows] = np.einsum("ij,ij->i", block, block)
    nearest = np.full(n, np.inf, dtype=np.float32)
    first: int | None = None
    if centers is not None and len(centers):
        known = np.asarray(centers, dtype=np.float32)
        if known.ndim != 2 or known.shape[1] != d:
            raise ValueError(f"k_center_greedy: centers must be (c, {d}) like vectors, got shape {known.shape}")
        known_norms = np.einsum("ij,ij->i", known, known)
        for rows in chunks:
            block = x[rows].astype(np.float32, copy=False)
            for lo in range(0, len(known), _CENTER_BLOCK):
                part = slice(lo, lo + _CENTER_BLOCK)
                dist = norms[rows, None] + known_norms[None, part] - 2.0 * (block @ known[part].T)
                np.minimum(nearest[rows], dist.min(axis=1), out=nearest[rows])
    else:
        total = np.zeros(d, dtype=np.float64)
        for rows in chunks:
            total += x[rows].astype(np.float32, copy=False).sum(axis=0, dtype=np.float64)
        _update_nearest(x, chunks, norms, (total / n).astype(np.float32), nearest)
        first = int(np.argmax(nearest))
        nearest.fill(np.inf)  # the mean only chose the start: it is no center
    picked = np.empty(k, dtype=np.int64)
    for step in range(k):
        pick = first if step == 0 and first is not None else int(np.argmax(nearest))
        picked[step] = pick
        _update_nearest(x, chunks, norms, x[pick].astype(np.float32), nearest)
        # A chosen row never comes back, even when rounding leaves its distance to itself above a duplicate's 0.
        nearest[picked[: step + 1]] = -np.inf
    return picked


def top_k(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Return the indices (int64) of the ``k`` highest finite scores, highest first, ties by lower index.

    NaN and +-inf are never picked, nor rows in ``exclude`` (indices, or a boolean mask of ``scores``' shape).
    Fewer than ``k`` come back when fewer are eligible. O(n): a partition finds the k-th value, only k are sorted.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"top_k: scores must be 1-d, got shape {s.shape}")
    if k < 0:
        raise ValueError(f"top_k: k must be >= 0, got {k}")
    eligible = np.isfinite(s)
    if exclude is not None:
        skip = np.asarray(exclude)
        if skip.dtype == bool:
            if skip.shape != s.shape:
                raise ValueError(f"top_k: exclude mask has shape {skip.shape}, scores {s.shape}")
            eligible &= ~skip
        elif skip.size:
            skip = skip.astype(np.int64).ravel()
            out_of_range = (skip < 0) | (skip >= len(s))
            if out_of_range.any():
                raise ValueError(f"top_k: exclude index {int(skip[out_of_range][0])} is outside 0..{len(s) - 1}")
            eligible[skip] = False
    rows = np.flatnonzero(eligible)
    values = s[rows]
    if k == 0:
        return np.empty(0, dtype=np.int64)
    if k < len(rows):
        cut = len(values) - k
        kth = np.partition(values, cut)[cut]
        above = values > kth
        ties = np.flatnonzero(values == kth)[: k - int(above.sum())]  # rows ascending: lower indices win a tie
        keep = np.concatenate([np.flatnonzero(above), ties])
        rows, values = rows[keep], values[keep]
    return rows[np.lexsort((rows, -values))].astype(np.int64)


def allocate(sizes: np.ndarray, budget: int, mode: str = "proportional", minimum: int = 1) -> np.ndarray:
    """Split an integer ``budget`` across strata holding ``sizes`` rows; return int64 counts summing to
    ``min(budget, sizes.sum())``, none above its stratum's size.

    ``proportional``: shares of size by largest remainder (ties: lower index), each non-empty stratum getting at
    least ``min(minimum, size)``; strata whose proportional share falls short are raised to it and the rest re-split
    among the others. When the budget cannot give every non-empty stratum its minimum, the largest strata get it
    first (ties: lower index) and the last may get a part. ``equal``: the same count each, a stratum with fewer rows
    gives all of them and its unused share goes to the others; leftover units go to the largest strata first.
    """
    size = np.asarray(sizes)
    if size.ndim != 1:
        raise ValueError(f"allocate: sizes must be 1-d, got shape {size.shape}")
    if size.size and (not np.all(np.isfinite(size)) or np.any(size != np.floor(size)) or size.min() < 0):
        raise ValueError(f"allocate: sizes must be non-negative integers, got {size.tolist()[:20]}")
    if mode not in ALLOCATION_MODES:
        raise ValueError(f"allocate: unknown mode {mode!r}; use one of {', '.join(ALLOCATION_MODES)}")
    if budget < 0 or minimum < 0:
        raise ValueError(f"allocate: budget and minimum must be >= 0, got budget={budget}, minimum={minimum}")
    size = size.astype(np.int64)
    total = int(min(int(budget), int(size.sum())))
    if total == 0:
        return np.zeros(len(size), dtype=np.int64)
    if mode == "equal":
        return _allocate_equal(size, total)
    floor = np.minimum(int(minimum), size)
    if floor.sum() > total:
        order = np.argsort(-size, kind="stable")
        before = np.cumsum(floor[order]) - floor[order]
        out = np.zeros(len(size), dtype=np.int64)
        out[order] = np.clip(total - before, 0, floor[order])
        return out
    # Water-filling: fix at their minimum the strata whose share (rest * size / weight) is below it, then re-split;
    # the shares of the others never exceed their sizes because total <= sizes.sum() holds for the rest too.
    fixed = size == 0
    while True:
        free = ~fixed
        rest = total - int(floor[fixed].sum())
        weight = int(size[free].sum())
        short = free & (floor * weight >= rest * size)
        if not short.any():
            break
        fixed |= short
    out = np.where(fixed, floor, 0).astype(np.int64)
    free_rows = np.flatnonzero(free)
    quota = rest * size[free_rows]
    base, remainder = quota // weight, quota % weight
    order = np.lexsort((free_rows, -remainder))
    base[order[: rest - int(base.sum())]] += 1
    out[free_rows] = base
    return out


def random_pick(n: int, k: int, seed: int | np.random.Generator = 0) -> np.ndarray:
    """Return ``min(k, n)`` distinct indices of ``range(n)`` (int64), drawn reproducibly from ``seed``."""
    if n < 0 or k < 0:
        raise ValueError(f"random_pick: n and k must be >= 0, got n={n}, k={k}")
    return _rng(seed).choice(n, size=min(k, n), replace=False).astype(np.int64)


def _allocate_equal(size: np.ndarray, total: int) -> np.ndarray:
    """Give every non-empty stratum the same count; one too small gives all its rows and the others share the rest."""
    out = np.zeros(len(size), dtype=np.int64)
    fixed = size == 0
    while (~fixed).any():
        free = ~fixed
        share = (total - int(out[fixed].sum())) // int(free.sum())
        small = free & (size <= share)
        if not small.any():
            break
        out[small] = size[small]
        fixed |= small
    free_rows = np.flatnonzero(~fixed)
    if len(free_rows):
        out[free_rows] = share
        # Every free stratum holds more than `share` rows, so each has room for one more.
        largest = free_rows[np.argsort(-size[free_rows], kind="stable")]
        out[largest[: total - int(out.sum())]] += 1
    return out


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _class_probs(p: np.ndarray, name: str) -> np.ndarray:
    """Return ``p`` as (n, k) class probabilities: a 1-d P(positive) becomes ``[1 - p, p]``."""
    probs = np.asarray(p, dtype=np.float64)
    if probs.ndim not in (1, 2) or (probs.ndim == 2 and probs.shape[1] < 2):
        raise ValueError(f"{name}: p must be (n,) P(positive) or (n, k >= 2) class probabilities, got shape "
                         f"{probs.shape}")
    _check_probabilities(probs, name)
    return np.stack([1.0 - probs, probs], axis=1) if probs.ndim == 1 else probs


def _check_probabilities(p: np.ndarray, name: str) -> None:
    bad = ~np.isnan(p) & ~((p >= 0.0) & (p <= 1.0))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name}: probabilities must lie in [0, 1] (NaN = missing); found {float(p[where])!r} "
                         f"at {where}")


def _xlogx(x: np.ndarray) -> np.ndarray:
    """Return ``x * log(x)`` with ``0 log 0 = 0``; NaN stays NaN."""
    positive = x > 0
    return np.where(positive, x * np.log(np.where(positive, x, 1.0)), np.where(np.isnan(x), np.nan, 0.0))


def _bootstrap_rows(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(y)
    for _ in range(_BOOTSTRAP_ATTEMPTS):
        rows = rng.integers(0, n, size=n)
        if 0 < y[rows].sum() < n:
            return rows
    return np.arange(n)


def _positive_probability(model, pool: np.ndarray) -> np.ndarray:
    """Return the fitted binary model's P(class 1) on ``pool``, chunk by chunk in float64."""
    coef = np.asarray(model.coef_[0], dtype=np.float64)
    intercept = float(model.intercept_[0])
    out = np.empty(len(pool), dtype=np.float64)
    for lo in range(0, len(pool), _PREDICT_ROWS):
        logits = pool[lo:lo + _PREDICT_ROWS].astype(np.float64) @ coef + intercept
        with np.errstate(over="ignore"):  # exp(-logit) overflows to inf for a certain negative: P = 0, as it should
            out[lo:lo + _PREDICT_ROWS] = 1.0 / (1.0 + np.exp(-logits))
    return out


def _update_nearest(x: np.ndarray, chunks: list[slice], norms: np.ndarray, center: np.ndarray,
                    nearest: np.ndarray) -> None:
    """Lower ``nearest`` (squared distances) to each row's squared distance to ``center``, chunk by chunk."""
    center_norm = np.float32(center @ center)
    for rows in chunks:
        dist = norms[rows] + center_norm - 2.0 * (x[rows].astype(np.float32, copy=False) @ center)
        np.minimum(nearest[rows], dist, out=nearest[rows])
