"""Sampling weights from expert consensus: per source and per domain, the share judged good under a Beta prior,
mapped to bounded weights; a row's weight is its source's x its domain's x its own quality factor.

The prior is centred on the share judged good over every group, so a group with few labels stays near weight 1 and
only a group that is consistently judged better (or worse) than the rest moves towards the ceiling (or floor).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dctp_tasks.config import FeedbackConfig

KINDS = ("source", "domain")
UNKNOWN = ""
"""The key of rows whose source or domain is null."""


@dataclass(frozen=True)
class GroupWeight:
    kind: str
    key: str
    good: int
    bad: int
    share: float
    """Posterior mean of the share judged good."""
    weight: float


@dataclass(frozen=True)
class Weights:
    """The weights in force: one per source and per domain with consensus labels; others weigh 1."""

    groups: list[GroupWeight]
    prior_share: float
    """The share judged good over every group: the prior's mean and the baseline a weight of 1 stands for."""

    def table(self, kind: str) -> dict[str, float]:
        return {g.key: g.weight for g in self.groups if g.kind == kind}

    def as_dict(self) -> dict:
        """Return the weights as JSON-safe data (commit metadata, reports)."""
        return {"prior_share": round(self.prior_share, 6),
                **{kind: {g.key: {"weight": round(g.weight, 6), "good": g.good, "bad": g.bad,
                                  "share": round(g.share, 6)} for g in self.groups if g.kind == kind}
                   for kind in KINDS}}


def group_weights(sources: np.ndarray, domains: np.ndarray, good: np.ndarray, cfg: FeedbackConfig) -> Weights:
    """Return the source and domain weights from the consensus labels of judged documents (``good``: bool per
    document; ``sources``/``domains``: their groups, ``None`` for unknown)."""
    good = np.asarray(good, dtype=bool)
    prior = float(good.mean()) if len(good) else 0.5
    prior = min(max(prior, 0.01), 0.99)  # all good (or all bad) so far: a baseline of 1.0 (0.0) divides badly
    groups = []
    for kind, keys in (("source", sources), ("domain", domains)):
        keys = np.asarray([UNKNOWN if k is None else str(k) for k in keys], dtype=object)
        names, index = np.unique(keys, return_inverse=True) if len(keys) else (np.array([], dtype=object),
                                                                                np.array([], dtype=np.int64))
        n_good = np.bincount(index, weights=good, minlength=len(names))
        n_all = np.bincount(index, minlength=len(names))
        share = (n_good + cfg.prior_strength * prior) / (n_all + cfg.prior_strength)
        weight = np.clip(share / prior, cfg.weight_floor, cfg.weight_ceiling)
        groups += [GroupWeight(kind, str(name), int(g), int(n - g), float(s), float(w))
                   for name, g, n, s, w in zip(names, n_good, n_all, share, weight, strict=True)]
    return Weights(groups, prior)


def row_weights(sources: pa.Array, domains: pa.Array, quality: pa.Array | None, good: np.ndarray,
                weights: Weights, cfg: FeedbackConfig) -> np.ndarray:
    """Return each row's ``sampling_weight``: its source's x its domain's weight x ``1 + influence * (2q - 1)``,
    x ``good_boost`` where the consensus is good, at most ``max_row_weight`` (float64)."""
    out = _lookup(sources, weights.table("source")) * _lookup(domains, weights.table("domain"))
    if quality is not None:
        q = pc.fill_null(pc.cast(quality, pa.float64()), np.nan).to_numpy(zero_copy_only=False)
        factor = 1.0 + cfg.quality_influence * (2.0 * np.clip(q, 0.0, 1.0) - 1.0)
        out *= np.where(np.isnan(factor), 1.0, factor)
    out = np.where(np.asarray(good, dtype=bool), out * cfg.good_boost, out)
    return np.minimum(out, cfg.max_row_weight)


def _lookup(keys: pa.Array, table: dict[str, float]) -> np.ndarray:
    """Map each key to its weight (1.0 where the group has none), vectorised."""
    names = sorted(table)
    values = np.array([table[n] for n in names] + [1.0], dtype=np.float64)  # last slot: no weight of its own
    keys = pc.fill_null(pc.cast(keys, pa.string()), UNKNOWN)
    index = pc.fill_null(pc.index_in(keys, value_set=pa.array(names, pa.string())), len(names))
    return values[index.to_numpy(zero_copy_only=False)]
