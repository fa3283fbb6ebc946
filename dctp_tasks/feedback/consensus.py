"""Expert consensus: merge binary good/bad judgements into one label per document, with per-expert reliability.

Weighted majority while few documents are shared, Dawid–Skene (EM over per-expert confusion matrices) beyond;
experts below the reliability floor are flagged and weigh less. Also agreement measures (Krippendorff, Cohen).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dctp_tasks.config import FeedbackConfig

GOOD, BAD = 1, 0
NEEDS_REVIEW = -1
"""Consensus label of a document whose vote is tied or not confident enough (or that has no judgement)."""
WEIGHTED_MAJORITY = "weighted_majority"
DAWID_SKENE = "dawid_skene"

# Weighted shares are sums of float weights (0.1 + 0.2 != 0.3): a split this close to even is a tie.
_TIE_TOL = 1e-9


@dataclass(frozen=True)
class Judgements:
    """One row per effective good/bad judgement."""

    item: np.ndarray
    """int64, the judged document, 0..n_items-1."""
    expert: np.ndarray
    """int64, who judged it, 0..n_experts-1."""
    label: np.ndarray
    """int8, 1 good / 0 bad."""
    n_items: int
    n_experts: int

    def __post_init__(self) -> None:
        if self.n_items < 0 or self.n_experts < 0:
            raise ValueError(f"n_items ({self.n_items}) and n_experts ({self.n_experts}) must be >= 0")
        arrays = {}
        for name in ("item", "expert", "label"):
            a = np.asarray(getattr(self, name))
            if a.ndim != 1:
                raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
            if a.size and a.dtype.kind not in "iub":
                raise ValueError(f"{name} must hold integers, got dtype {a.dtype}")
            arrays[name] = a
        lengths = {name: a.size for name, a in arrays.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"item, expert and label lengths differ: {lengths}")
        for name, bound in (("item", self.n_items), ("expert", self.n_experts)):
            a = arrays[name]
            if a.size and (a.min() < 0 or a.max() >= bound):
                raise ValueError(f"{name} out of range 0..{bound - 1}: min {a.min()}, max {a.max()}")
        label = arrays["label"]
        if label.size and (label.min() < 0 or label.max() > 1):
            bad = np.unique(label[(label < 0) | (label > 1)])
            raise ValueError(f"label must be 0 (bad) or 1 (good), got {bad.tolist()}")
        # Frozen, but the arrays are normalised once here so every consumer can rely on the dtypes.
        for name, dtype in (("item", np.int64), ("expert", np.int64), ("label", np.int8)):
            object.__setattr__(self, name, arrays[name].astype(dtype, copy=False))


@dataclass(frozen=True)
class Consensus:
    """The merged labels per document and the reliability of each expert."""

    label: np.ndarray
    """int8 per item: 1 good, 0 bad, -1 needs review (tie, confidence below the minimum, or no judgement)."""
    p_good: np.ndarray
    """float64 per item: Dawid–Skene posterior or weighted share of good; NaN without (weighted) judgements."""
    confidence: np.ndarray
    """float64 per item: max(p_good, 1 - p_good)."""
    n_judgements: np.ndarray
    """int64 per item."""
    method: str
    """``weighted_majority`` or ``dawid_skene``."""
    reliability: np.ndarray
    """float64 per expert, from the first pass: Dawid–Skene's class-prior-weighted confusion diagonal, or the
    majority's leave-one-out agreement; NaN below ``min_expert_judgements`` judgements on shared items (for the
    majority: shared items where the others are not tied)."""
    agreement: np.ndarray
    """float64 per expert: share of their judgements equal to the final label (decided items only); NaN if none."""
    judgements: np.ndarray
    """int64 per expert: their judgement count."""
    flagged: np.ndarray
    """bool per expert: reliability below the floor."""
    confusion: np.ndarray | None
    """(n_experts, 2, 2) P(label l | true class k) as [expert, k, l] of the final pass; None for majority."""
    class_prior: np.ndarray | None
    """(2,) P(bad), P(good) of the final Dawid–Skene pass; None for majority."""
    iterations: int
    """EM iterations of the final pass (0 for majority)."""
    shared_items: int
    """Documents with two or more judgements."""


def _expert_weights(j: Judgements, weights: np.ndarray | None) -> np.ndarray:
    if weights is None:
        return np.ones(j.n_experts)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (j.n_experts,):
        raise ValueError(f"weights must have shape ({j.n_experts},), got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and >= 0")
    return w


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Divide elementwise, NaN where the denominator is not positive."""
    return np.divide(num, den, out=np.full(np.shape(num), np.nan), where=den > 0)


def weighted_majority(j: Judgements, weights: np.ndarray) -> np.ndarray:
    """Return each item's weighted share of good judgements (NaN without judgements or with zero total weight)."""
    w = _expert_weights(j, weights)[j.expert]
    good = np.bincount(j.item, weights=w * j.label, minlength=j.n_items)
    total = np.bincount(j.item, weights=w, minlength=j.n_items)
    return _ratio(good, total)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # The tanh form neither overflows nor warns for large |x|, unlike 1 / (1 + exp(-x)).
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def dawid_skene(
    j: Judgements,
    weights: np.ndarray | None = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
    smoothing: float = 0.01,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Estimate item posteriors and expert confusion matrices by Dawid–Skene EM.

    Returns ``(p_good per item, confusion (n_experts, 2, 2) [expert, true k, label l], class_prior (2,),
    iterations)``. ``weights`` temper each expert's evidence in the E-step (0 ignores it, None = all 1); the
    M-step counts every judgement once, so a down-weighted expert's confusion matrix is still estimated.
    Posteriors start from the weighted majority. Items without judgements, or whose judgements all weigh 0,
    get NaN. Label switching: two-class EM is symmetric under swapping the classes, and the majority start
    normally lands on the solution where experts beat chance; if the judgement-weighted mean accuracy
    (class-prior-weighted diagonal) still ends below 0.5, that is the mirrored solution and the classes are
    swapped back (the assumption being that the experts, on the whole, are better than a coin flip).
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if smoothing <= 0:
        raise ValueError(f"smoothing must be > 0 (it keeps a perfect expert off log(0)), got {smoothing}")
    w = _expert_weights(j, weights)
    n_exp = j.n_experts
    confusion = np.full((n_exp, 2, 2), 0.5)
    prior = np.array([0.5, 0.5])
    if j.item.size == 0:
        return np.full(j.n_items, np.nan), confusion, prior, 0

    # Each judgement is an (expert, label) cell; everything per iteration is a gather or a bincount over cells.
    cell = j.expert * 2 + j.label
    n_cell = np.bincount(cell, minlength=2 * n_exp).astype(np.float64).reshape(n_exp, 2)
    # Items whose judgements all weigh 0 carry no evidence: kept out of the prior and the convergence test.
    has_evidence = np.bincount(j.item, weights=w[j.expert], minlength=j.n_items) > 0
    n_evidence = int(has_evidence.sum())

    post = weighted_majority(j, w)
    post[np.isnan(post)] = 0.5
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        # M-step: soft counts of each expert's labels per true class, smoothed.
        good = np.bincount(cell, weights=post[j.item], minlength=2 * n_exp).reshape(n_exp, 2)
        counts = np.stack([n_cell - good, good], axis=1)
        confusion = (counts + smoothing) / (counts.sum(axis=2, keepdims=True) + 2 * smoothing)
        p1 = (post[has_evidence].sum() + smoothing) / (n_evidence + 2 * smoothing)
        prior = np.array([1.0 - p1, p1])
        # E-step in log-odds: only the log-likelihood ratio of each (expert, label) cell matters for two classes.
        log_conf = np.log(confusion)
        llr = (w[:, None] * (log_conf[:, 1, :] - log_conf[:, 0, :])).ravel()
        log_odds = np.log(p1 / (1.0 - p1)) + np.bincount(j.item, weights=llr[cell], minlength=j.n_items)
        new = _sigmoid(log_odds)
        delta = float(np.max(np.abs(new[has_evidence] - post[has_evidence]), initial=0.0))
        post = new
        if delta < tol:
            break

    per_expert = n_cell.sum(axis=1)
    accuracy = prior[0] * confusion[:, 0, 0] + prior[1] * confusion[:, 1, 1]
    if per_expert.sum() > 0 and np.average(accuracy, weights=per_expert) < 0.5:
        post = 1.0 - post
        confusion = confusion[:, ::-1, :].copy()
        prior = prior[::-1].copy()
    p_good = np.where(has_evidence, post, np.nan)
    return p_good, confusion, prior, iterations


def _leave_one_out(j: Judgements, w: np.ndarray, on_shared: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return each expert's agreement with the weighted majority of the others, and how many judgements it counts."""
    wn = w[j.expert]
    good = np.bincount(j.item, weights=wn * j.label, minlength=j.n_items)
    total = np.bincount(j.item, weights=wn, minlength=j.n_items)
    others_good = good[j.item] - wn * j.label
    others_total = total[j.item] - wn
    margin = 2.0 * others_good - others_total
    decided = on_shared & (others_total > 0) & (np.abs(margin) > _TIE_TOL * total[j.item])
    agree = (margin > 0) == (j.label == GOOD)
    n = np.bincount(j.expert[decided], minlength=j.n_experts)
    hits = np.bincount(j.expert[decided], weights=agree[decided], minlength=j.n_experts)
    return _ratio(hits, n), n


def merge_consensus(j: Judgements, weights: np.ndarray, cfg: FeedbackConfig) -> Consensus:
    """Merge the judgements into one label per item, flag unreliable experts and down-weight them once."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (j.n_experts,) or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"weights must be {j.n_experts} finite roster weights > 0, got shape {w.shape}")
    n_judgements = np.bincount(j.item, minlength=j.n_items).astype(np.int64)
    shared = n_judgements >= 2
    shared_items = int(shared.sum())
    on_shared = shared[j.item]
    use_ds = shared_items >= cfg.dawid_skene_min_items

    def run(expert_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, int]:
        if use_ds:
            return dawid_skene(j, expert_weights)
        return weighted_majority(j, expert_weights), None, None, 0

    # Dawid–Skene learns each expert's reliability from the data; roster weights on top would let a heavier expert
    # win every 1-vs-1 split and then look perfect. They weigh the majority only.
    base = np.ones_like(w) if use_ds else w
    p_good, confusion, prior, iterations = run(base)
    if use_ds:
        # the diagonal weighted by the classes of the documents each expert judged: an expert who only ever saw good
        # documents is measured on those, not on a class whose row of their matrix is the smoothing prior alone
        seen_good = _ratio(np.bincount(j.expert, weights=np.nan_to_num(p_good[j.item], nan=prior[1]),
                                       minlength=j.n_experts),
                           np.bincount(j.expert, minlength=j.n_experts))
        seen_good = np.where(np.isnan(seen_good), prior[1], seen_good)
        reliability = (1.0 - seen_good) * confusion[:, 0, 0] + seen_good * confusion[:, 1, 1]
        n_reliable = np.bincount(j.expert[on_shared], minlength=j.n_experts)
    else:
        reliability, n_reliable = _leave_one_out(j, w, on_shared)
    reliability = np.where(n_reliable >= cfg.min_expert_judgements, reliability, np.nan)
    flagged = reliability < cfg.reliability_floor  # NaN compares False: an unmeasured expert is never flagged
    if flagged.any():
        p_good, confusion, prior, iterations = run(np.where(flagged, base * cfg.flagged_weight, base))

    confidence = np.maximum(p_good, 1.0 - p_good)
    decided = (confidence >= cfg.min_confidence) & (np.abs(p_good - 0.5) > _TIE_TOL)  # NaN fails both
    label = np.where(decided, np.where(p_good > 0.5, GOOD, BAD), NEEDS_REVIEW).astype(np.int8)

    settled = label[j.item] != NEEDS_REVIEW
    n_settled = np.bincount(j.expert[settled], minlength=j.n_experts)
    hits = np.bincount(
        j.expert[settled], weights=j.label[settled] == label[j.item][settled], minlength=j.n_experts
    )
    return Consensus(
        label=label,
        p_good=p_good,
        confidence=confidence,
        n_judgements=n_judgements,
        method=DAWID_SKENE if use_ds else WEIGHTED_MAJORITY,
        reliability=reliability,
        agreement=_ratio(hits, n_settled),
        judgements=np.bincount(j.expert, minlength=j.n_experts).astype(np.int64),
        flagged=flagged,
        confusion=confusion,
        class_prior=prior,
        iterations=iterations,
        shared_items=shared_items,
    )


def nominal_alpha(unit: np.ndarray, value: np.ndarray) -> float:
    """Return Krippendorff's nominal alpha of (unit, value) pairs; values are any hashable-as-int categories.

    Units with fewer than two values are not pairable and ignored; NaN when nothing is pairable or the expected
    disagreement is 0 (a single category throughout).
    """
    unit = np.asarray(unit)
    value = np.asarray(value)
    if unit.shape != value.shape or unit.ndim != 1:
        raise ValueError(f"unit and value must be one-dimensional of equal length, got {unit.shape}, {value.shape}")
    if unit.size == 0:
        return float("nan")
    _, u = np.unique(unit, return_inverse=True)
    cats, v = np.unique(value, return_inverse=True)
    n_units, k = int(u.max()) + 1, cats.size
    counts = np.bincount(u * k + v, minlength=n_units * k).reshape(n_units, k).astype(np.float64)
    m = counts.sum(axis=1)
    pairable = m >= 2
    counts, m = counts[pairable], m[pairable]
    if counts.shape[0] == 0:
        return float("nan")
    # Coincidence matrix o_ck = sum_u (n_uc n_uk - [c = k] n_uc) / (m_u - 1).
    scaled = counts / (m - 1.0)[:, None]
    coincidence = counts.T @ scaled - np.diag(scaled.sum(axis=0))
    n_c = coincidence.sum(axis=1)
    n = n_c.sum()
    expected = n * n - float(np.sum(n_c * n_c))
    if n <= 1 or expected <= 0:
        return float("nan")
    observed = n - float(np.trace(coincidence))
    return float(1.0 - (n - 1.0) * observed / expected)


def krippendorff_alpha(j: Judgements) -> float:
    """Return Krippendorff's nominal alpha over the items with two or more judgements (NaN when undefined)."""
    return nominal_alpha(j.item, j.label)


def cohen_kappa_pairs(j: Judgements, min_overlap: int = 1) -> dict[tuple[int, int], tuple[float, int]]:
    """Return (Cohen's kappa, common items) per expert pair (a < b) with at least ``min_overlap`` common items.

    Kappa is NaN when undefined (both experts constant and equal). Assumes one judgement per (item, expert).
    """
    if j.item.size == 0:
        return {}
    order = np.lexsort((j.expert, j.item))
    item, expert, label = j.item[order], j.expert[order], j.label[order].astype(np.int64)
    size = np.bincount(item, minlength=j.n_items)
    start = np.concatenate(([0], np.cumsum(size)[:-1]))
    pos = np.arange(item.size) - start[item]
    room = size[item] - pos  # judgements of the same item from this one on, itself included
    keys, cells = [], []
    # Pair each judgement with the one d places later in its item: a loop over the largest item size, not items.
    for d in range(1, int(size.max())):
        a = np.flatnonzero(room > d)
        a = a[expert[a] != expert[a + d]]
        b = a + d
        keys.append(expert[a] * j.n_experts + expert[b])  # sorted by expert within an item, so expert[a] < b's
        cells.append(label[a] * 2 + label[b])
    if not keys:
        return {}
    key = np.concatenate(keys)
    pair, inv = np.unique(key, return_inverse=True)
    table = np.bincount(inv * 4 + np.concatenate(cells), minlength=pair.size * 4).reshape(-1, 2, 2)
    n = table.sum(axis=(1, 2))
    a1, b1 = table[:, 1, :].sum(axis=1), table[:, :, 1].sum(axis=1)
    # Integer form of (p_o - p_e) / (1 - p_e): exact, so the undefined case is an exact zero.
    chance = a1 * b1 + (n - a1) * (n - b1)
    num = n * (table[:, 0, 0] + table[:, 1, 1]) - chance
    den = n * n - chance
    kappa = _ratio(num.astype(np.float64), den.astype(np.float64))
    out: dict[tuple[int, int], tuple[float, int]] = {}
    for p, k, c in zip(pair.tolist(), kappa.tolist(), n.tolist(), strict=True):
        if c >= min_overlap:
            out[(p // j.n_experts, p % j.n_experts)] = (k, c)
    return out


def simulate(
    n_items: int, experts: Sequence[float], per_item: int, prevalence: float, seed: int
) -> tuple[Judgements, np.ndarray]:
    """Simulate judgements: each item by ``per_item`` distinct random experts, each right with its accuracy.

    Returns the judgements and the true label per item (int8). Errors are symmetric: a wrong judgement is the
    opposite label.
    """
    accuracy = np.asarray(experts, dtype=np.float64)
    if not 1 <= per_item <= accuracy.size:
        raise ValueError(f"per_item must be 1..{accuracy.size} (the number of experts), got {per_item}")
    rng = np.random.default_rng(seed)
    truth = (rng.random(n_items) < prevalence).astype(np.int8)
    # Distinct experts per item: the per_item smallest of random keys, no Python loop over items.
    keys = rng.random((n_items, accuracy.size))
    if per_item < accuracy.size:
        chosen = np.argpartition(keys, per_item - 1, axis=1)[:, :per_item]
    else:
        chosen = np.argsort(keys, axis=1)
    item = np.repeat(np.arange(n_items, dtype=np.int64), per_item)
    expert = chosen.ravel().astype(np.int64)
    right = rng.random(item.size) < accuracy[expert]
    label = np.where(right, truth[item], 1 - truth[item]).astype(np.int8)
    return Judgements(item, expert, label, n_items, accuracy.size), truth
