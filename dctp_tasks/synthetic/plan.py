"""Plan: how many synthetic rows each domain gets today, from its share of the day's kept real rows.

A domain's target is the larger of its configured share (``synthetic.targets``) and ``min_share_of_largest`` x the
largest domain's rows; its shortfall is capped by ``per_domain_cap``, and the day's total by ``daily_budget`` and by
``max_share`` of the date's partition (real + synthetic). When the caps bind, the total is split in proportion to the
shortfalls (largest remainder), so every short domain gets its part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from dctp_tasks.config import SyntheticConfig
from dctp_tasks.dedup.report import table_cell


@dataclass
class DomainPlan:
    domain: str
    real: int
    target: int
    shortfall: int
    planned: int = 0
    why: str = ""


@dataclass
class Plan:
    real_total: int
    allowed_total: int
    """Most synthetic rows the date's partition may hold under ``max_share``."""
    budget: int
    domains: list[DomainPlan] = field(default_factory=list)

    @property
    def planned(self) -> int:
        return sum(d.planned for d in self.domains)

    def for_domain(self, domain: str) -> int:
        return next((d.planned for d in self.domains if d.domain == domain), 0)

    def as_dict(self) -> dict:
        return {"real_total": self.real_total, "allowed_total": self.allowed_total, "budget": self.budget,
                "planned": self.planned, "domains": [d.__dict__ for d in self.domains]}


def allowed_synthetic(real: int, max_share: float) -> int:
    """Return the most synthetic rows ``s`` with ``s / (real + s) <= max_share``."""
    if max_share <= 0 or real <= 0:
        return 0
    allowed = math.floor(max_share * real / (1.0 - max_share) + 1e-9)
    while allowed > 0 and allowed / (real + allowed) > max_share:  # guard the float rounding
        allowed -= 1
    return allowed


def plan_generation(counts: dict[str, int], cfg: SyntheticConfig) -> Plan:
    """Return the plan for a day whose kept real rows per domain are ``counts``."""
    real_total = int(sum(counts.values()))
    allowed = allowed_synthetic(real_total, cfg.max_share)
    budget = min(cfg.daily_budget, allowed)
    plan = Plan(real_total=real_total, allowed_total=allowed, budget=budget)
    if not counts or not cfg.enabled:
        return plan
    largest = max(counts.values())
    for domain in sorted(set(counts) | set(cfg.targets)):
        real = int(counts.get(domain, 0))
        if real == 0:
            # no real document of the domain today: nothing to seed from
            if domain in cfg.targets:
                plan.domains.append(DomainPlan(domain, 0, 0, 0, why="no real rows today to seed from"))
            continue
        target, why = 0, []
        if domain in cfg.targets:
            target = _ceil_share(cfg.targets[domain], real_total)
            why.append(f"target {cfg.targets[domain]:.1%} of {real_total:,}")
        if cfg.min_share_of_largest is not None:
            floor = _ceil_share(cfg.min_share_of_largest, largest)
            if floor > target:
                target, why = floor, [f"{cfg.min_share_of_largest:.0%} of the largest domain ({largest:,})"]
        shortfall = max(0, target - real)
        if shortfall == 0:
            continue
        plan.domains.append(DomainPlan(domain, real, target, shortfall, why="; ".join(why)))
    wanted = np.array([min(d.shortfall, cfg.per_domain_cap) for d in plan.domains], dtype=np.int64)
    for d, w in zip(plan.domains, wanted, strict=True):
        if w < d.shortfall:
            d.why += f"; capped at per_domain_cap {cfg.per_domain_cap:,}"
    granted = _split(wanted, budget)
    for d, w, g in zip(plan.domains, wanted, granted, strict=True):
        d.planned = int(g)
        if g < w:
            limit = "daily_budget" if cfg.daily_budget <= allowed else f"max_share {cfg.max_share:.0%}"
            d.why += f"; {limit} leaves {g:,} of {w:,}"
    return plan


def _ceil_share(share: float, rows: int) -> int:
    """Return ``ceil(share * rows)`` for the share as written in the config: in floats 0.07 x 100 is 7.000…01."""
    return math.ceil(Fraction(repr(share)) * rows)


def _split(wanted: np.ndarray, total: int) -> np.ndarray:
    """Grant ``wanted`` in full when it fits in ``total``, else in proportion (largest remainder, ties by order)."""
    if wanted.sum() <= total:
        return wanted.copy()
    if total <= 0:
        return np.zeros_like(wanted)
    # integer quotients and remainders: float shares would break exact ties by rounding noise, not by order
    granted, remainder = np.divmod(wanted * total, wanted.sum())
    order = np.argsort(-remainder, kind="stable")
    granted[order[:total - int(granted.sum())]] += 1
    return granted


def render_plan(plan: Plan) -> list[str]:
    """Return the plan as Markdown lines for the report."""
    lines = [f"Kept real rows today: {plan.real_total:,}. The partition may hold {plan.allowed_total:,} synthetic "
             f"rows (max_share); today's budget is {plan.budget:,}; planned: {plan.planned:,}.", ""]
    if not plan.domains:
        lines.append("No domain is short of data under the configured targets: nothing to generate.")
        return lines
    lines += ["| domain | real rows | target | shortfall | planned | why |", "|---|---:|---:|---:|---:|---|"]
    lines += [f"| {table_cell(d.domain)} | {d.real:,} | {d.target:,} | {d.shortfall:,} | {d.planned:,} | "
              f"{table_cell(d.why)} |" for d in plan.domains]
    return lines
