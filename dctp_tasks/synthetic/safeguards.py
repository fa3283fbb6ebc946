"""Safeguards: measure each generated row against what it may copy, then decide, one named ledger reason per row.

Measuring (model work, done once when the rows are generated) stores similarities in each row's ``generation``
struct; ``decide_candidates`` applies the thresholds to the stored numbers, so the same generation can be re-decided
with other thresholds without a model call. Reasons, in the order they are checked:

- ``synthetic_malformed``: no parsable pair, an empty answer, a truncated output, or an answer whose content words
  are mostly absent from its chunk (not grounded);
- ``synthetic_copies_seed``: a near (word 5-gram Jaccard) or semantic (embedding cosine) copy of its chunk, of a real
  document (the near-dedup history through today, today's stored embeddings) or of an earlier generated row, or a
  prompt with ROUGE-L above the threshold against the prompts already accepted (Self-Instruct);
- ``synthetic_low_quality``: failing a rule of the real data, below the composite quality gate, or below (or
  without) the judge's threshold;
- ``synthetic_suspect_reward``: the trained classifiers like it far more than its perplexity and heuristic scores
  predict (the regression is fitted on the day's real rows);
- ``synthetic_distribution_shift``: the domain's whole batch drifts from its real rows (length KS, vocabulary
  Jensen–Shannon, embedding MMD) beyond the bounds, or collapses (``collapse_action: hold``);
- ``synthetic_over_cap``: accepted rows beyond ``max_share`` of the partition (the lowest judged go first).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dctp_tasks.config import NearDedupConfig, SyntheticConfig
from dctp_tasks.dedup import minhash
from dctp_tasks.synthetic import measures

log = logging.getLogger(__name__)

MALFORMED = "synthetic_malformed"
COPIES_SEED = "synthetic_copies_seed"
LOW_QUALITY = "synthetic_low_quality"
SUSPECT_REWARD = "synthetic_suspect_reward"
DISTRIBUTION_SHIFT = "synthetic_distribution_shift"
OVER_CAP = "synthetic_over_cap"
REASONS = (MALFORMED, COPIES_SEED, LOW_QUALITY, SUSPECT_REWARD, DISTRIBUTION_SHIFT, OVER_CAP)


@dataclass
class RealDomain:
    """A sample of one domain's kept real rows of the day: what a generated batch is compared with."""

    texts: list[str]
    vectors: np.ndarray


@dataclass
class RewardBasis:
    """The real rows' perplexity and heuristic scores (features) and trained classifiers' score (target)."""

    features: np.ndarray
    target: np.ndarray
    names: list[str]


@dataclass
class BatchTest:
    domain: str
    rows: int
    tested: bool
    length_ks: float = float("nan")
    length_p: float = float("nan")
    vocab_js: float = float("nan")
    mmd: float = float("nan")
    mmd_p: float = float("nan")
    distinct2: float = float("nan")
    real_distinct2: float = float("nan")
    dispersion: float = float("nan")
    real_dispersion: float = float("nan")
    shifted: list[str] = field(default_factory=list)
    collapsed: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    """One decision per candidate row: ``reason`` is ``None`` for accepted rows."""

    reason: np.ndarray  # object
    detail: np.ndarray  # object
    batches: list[BatchTest]
    reward_z: np.ndarray
    """Each row's reward-hacking z-score (NaN where the check could not run)."""

    @property
    def accepted(self) -> np.ndarray:
        return self.reason == None  # noqa: E711 - elementwise on an object array

    def counts(self) -> dict[str, int]:
        values, counts = np.unique(self.reason[~self.accepted].astype(str), return_counts=True)
        return dict(zip(values.tolist(), counts.tolist(), strict=True))


# measuring -------------------------------------------------------------------------------------------------------

def seed_similarity(texts: list[str], chunks: list[str], n: int) -> np.ndarray:
    """Return the exact Jaccard of each text's word ``n``-gram set with its chunk's."""
    out = np.zeros(len(texts))
    for i, (text, chunk) in enumerate(zip(texts, chunks, strict=True)):
        a, b = set(minhash.shingles(text or "", n)), set(minhash.shingles(chunk or "", n))
        out[i] = len(a & b) / len(a | b) if a and b else 0.0
    return out


def signatures(texts: list[str], cfg: NearDedupConfig) -> np.ndarray:
    return minhash.text_signatures(pa.array(texts, pa.string()), cfg.ngram, cfg.num_perm, cfg.seed, cfg.scheme,
                                   hash=cfg.hash)


def nearest_in_history(history: pa.Table, keys: np.ndarray, sigs: np.ndarray,
                       num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """Return each row's highest estimated Jaccard with a stored document sharing one of its LSH bands (``history``
    as ``dctp_tasks.dedup.near.history_matches`` returns it), and that document's id (``None`` without one)."""
    best = np.zeros(len(sigs))
    best_id = np.full(len(sigs), None, dtype=object)
    if history.num_rows == 0:
        return best, best_id
    hashes = history.column("band_hash").to_numpy()
    flat = history.column("signature").combine_chunks()
    stored = np.frombuffer(flat.buffers()[1], dtype="<u4")[flat.offset * num_perm:(flat.offset + len(flat))
                                                              * num_perm].reshape(len(flat), num_perm)
    ids = np.asarray(history.column("doc_id").to_pylist(), dtype=object)
    order = np.argsort(hashes, kind="stable")
    hashes = hashes[order]
    for i in range(len(sigs)):
        lo = np.searchsorted(hashes, keys[i], side="left")
        hi = np.searchsorted(hashes, keys[i], side="right")
        rows = np.unique(np.concatenate([order[a:b] for a, b in zip(lo, hi, strict=True)] or [np.zeros(0, int)]))
        if len(rows):
            estimate = (stored[rows] == sigs[i]).mean(axis=1)
            top = int(np.argmax(estimate))
            best[i], best_id[i] = float(estimate[top]), ids[rows[top]]
    return best, best_id


def max_cosine(vectors: np.ndarray, others: np.ndarray, other_ids: np.ndarray, block: int = 50_000,
               best: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return each vector's highest cosine with ``others`` (both L2-normalised) and that row's id, folding into
    ``best`` from earlier blocks."""
    top = np.full(len(vectors), -1.0) if best is None else best[0]
    top_id = np.full(len(vectors), None, dtype=object) if best is None else best[1]
    for start in range(0, len(others), block):
        sims = vectors @ others[start:start + block].T
        if sims.size == 0:
            continue
        arg = sims.argmax(axis=1)
        value = sims[np.arange(len(vectors)), arg]
        better = value > top
        top[better] = value[better]
        top_id[better] = other_ids[start + arg[better]]
    return top, top_id


# deciding --------------------------------------------------------------------------------------------------------

def decide_candidates(cands: pa.Table, cfg: SyntheticConfig, *, rule_fail: np.ndarray, rule_detail: np.ndarray,
                      quality: np.ndarray, real: dict[str, RealDomain], reward: RewardBasis | None,
                      reward_target: np.ndarray | None, reward_features: np.ndarray | None, allowed_total: int,
                      near_cfg: NearDedupConfig, seed: int = 0,
                      earlier_prompts: dict[str, list[str]] | None = None) -> Outcome:
    """Decide every candidate (``cands``: the stored candidates with ``generation``, ``signature``, ``vector``).

    ``earlier_prompts`` are the prompts accepted on earlier dates, by domain: a new prompt too close to one of them
    is a copy (ROUGE-L), as is one too close to a prompt accepted before it today."""
    n = cands.num_rows
    reason = np.full(n, None, dtype=object)
    detail = np.full(n, None, dtype=object)
    gen = {name: _field(cands, name) for name in ("malformed", "judge_score", "grounding", "seed_similarity",
                                                   "near_similarity", "near_copy_of", "semantic_similarity",
                                                   "semantic_copy_of")}

    def reject(mask: np.ndarray, why: str, details: list[str] | np.ndarray) -> None:
        open_ = mask & (reason == None)  # noqa: E711
        reason[open_] = why
        detail[open_] = np.asarray(details, dtype=object)[open_] if len(details) == n else details

    malformed = gen["malformed"] != None  # noqa: E711
    reject(malformed, MALFORMED, [f"output: {w}" for w in gen["malformed"]])
    grounding = gen["grounding"].astype(np.float64)
    if cfg.min_grounding > 0:
        with np.errstate(invalid="ignore"):
            ungrounded = grounding < _stored(cfg.min_grounding)
        reject(ungrounded, MALFORMED, [f"not grounded: {g:.2f} of the answer's content words in its chunk "
                                       f"< {cfg.min_grounding:.2f}" for g in grounding])
    with np.errstate(invalid="ignore"):
        reject(gen["seed_similarity"].astype(float) >= _stored(cfg.near_threshold), COPIES_SEED,
               [f"copies its chunk: 5-gram Jaccard {s:.2f} >= {cfg.near_threshold:.2f}"
                for s in gen["seed_similarity"].astype(float)])
        reject(gen["near_similarity"].astype(float) >= _stored(cfg.near_threshold), COPIES_SEED,
               [f"near copy of {d}: estimated Jaccard {s:.2f} >= {cfg.near_threshold:.2f}"
                for s, d in zip(gen["near_similarity"].astype(float), gen["near_copy_of"], strict=True)])
        reject(gen["semantic_similarity"].astype(float) >= _stored(cfg.semantic_threshold), COPIES_SEED,
               [f"semantic copy of {d}: cosine {s:.3f} >= {cfg.semantic_threshold:.3f}"
                for s, d in zip(gen["semantic_similarity"].astype(float), gen["semantic_copy_of"], strict=True)])
    # quality: the real data's rules, the composite gate, the judge
    reject(rule_fail, LOW_QUALITY, [f"rule {d}" for d in rule_detail])
    if cfg.quality_gate is not None:
        with np.errstate(invalid="ignore"):
            reject(quality < cfg.quality_gate, LOW_QUALITY,
                   [f"quality={q:.2f}<{cfg.quality_gate:.2f}" for q in quality])
    judge = gen["judge_score"].astype(np.float64)
    if cfg.judge_threshold is not None:
        with np.errstate(invalid="ignore"):
            low = ~(judge >= _stored(cfg.judge_threshold))
        reject(low, LOW_QUALITY, [f"judge score {j:g}<{cfg.judge_threshold:g}" if j == j
                                  else "the judge gave no score" for j in judge])
    z = np.full(n, np.nan)
    if cfg.reward_z is not None and reward is not None and reward_target is not None:
        z = measures.reward_residual_z(reward.features, reward.target, reward_features, reward_target)
        with np.errstate(invalid="ignore"):
            reject(z > cfg.reward_z, SUSPECT_REWARD,
                   [f"classifiers {t:.2f}, {zz:.1f} sd above what perplexity and heuristics predict "
                    f"(> {cfg.reward_z:g})"
                    for t, zz in zip(reward_target, z, strict=True)])
    # only now, among the rows every row-level check accepted: a row knocked out above cannot take its copy with it
    _copies_of_each_other(cands, reason, detail, cfg, near_cfg, earlier_prompts or {})
    batches = _batch_tests(cands, reason, detail, cfg, real, seed)
    _cap(reason, detail, judge, quality, allowed_total)
    return Outcome(reason, detail, batches, z)


def _copies_of_each_other(cands: pa.Table, reason: np.ndarray, detail: np.ndarray, cfg: SyntheticConfig,
                          near_cfg: NearDedupConfig, earlier_prompts: dict[str, list[str]]) -> None:
    """Reject rows that copy an earlier row still accepted (near, semantic), then prompts too close to the prompts
    of their domain accepted before them, on earlier dates or earlier today (ROUGE-L, in order)."""
    open_rows = np.flatnonzero(reason == None)  # noqa: E711
    if len(open_rows) > 1:
        sigs = signature_matrix(cands.column("signature"), near_cfg.num_perm)[open_rows]
        vecs = _vectors(cands.column("vector"))[open_rows]
        ids = np.asarray(cands.column("doc_id").to_pylist(), dtype=object)
        kept: list[int] = []
        for pos, row in enumerate(open_rows):
            if kept:
                earlier = np.asarray(kept)
                jaccard = (sigs[earlier] == sigs[pos]).mean(axis=1)
                cosine = vecs[earlier] @ vecs[pos] if vecs.size else np.zeros(len(earlier))
                j, c = int(np.argmax(jaccard)), int(np.argmax(cosine))
                if jaccard[j] >= cfg.near_threshold:
                    reason[row], detail[row] = COPIES_SEED, (f"near copy of generated {ids[open_rows[earlier[j]]]}: "
                                                             f"estimated Jaccard {jaccard[j]:.2f}")
                    continue
                if cosine[c] >= cfg.semantic_threshold:
                    reason[row], detail[row] = COPIES_SEED, (f"semantic copy of generated "
                                                             f"{ids[open_rows[earlier[c]]]}: cosine {cosine[c]:.3f}")
                    continue
            kept.append(pos)
    prompts = cands.column("prompt").to_pylist()
    domains = np.asarray(cands.column("domain").to_pylist(), dtype=object)
    for domain in sorted(set(domains[reason == None].tolist())):  # noqa: E711
        rows = np.flatnonzero((reason == None) & (domains == domain))  # noqa: E711
        keep, best = measures.novel_prompts([prompts[i] or "" for i in rows], earlier_prompts.get(domain, []),
                                            cfg.rouge_threshold)
        for row, ok, score in zip(rows, keep, best, strict=True):
            if not ok:
                reason[row], detail[row] = COPIES_SEED, (f"prompt ROUGE-L {score:.2f} > {cfg.rouge_threshold:.2f} "
                                                         "against a prompt already accepted")


def _batch_tests(cands: pa.Table, reason: np.ndarray, detail: np.ndarray, cfg: SyntheticConfig,
                 real: dict[str, RealDomain], seed: int) -> list[BatchTest]:
    """Test each domain's batch of rows still accepted against its real rows; hold back a batch that drifts."""
    domains = np.asarray(cands.column("domain").to_pylist(), dtype=object)
    texts = cands.column("text").to_pylist()
    vectors = _vectors(cands.column("vector"))
    out = []
    for domain in sorted(set(domains[reason == None].tolist())):  # noqa: E711
        rows = np.flatnonzero((domains == domain) & (reason == None))  # noqa: E711
        sample = real.get(domain)
        test = BatchTest(domain, len(rows), tested=False)
        out.append(test)
        if sample is None or len(rows) < cfg.shift_min_rows or len(sample.texts) < cfg.shift_min_rows:
            continue
        test.tested = True
        mine = [texts[i] for i in rows]
        lengths = np.array([len(t.split()) for t in mine])
        real_lengths = np.array([len(t.split()) for t in sample.texts])
        test.length_ks, test.length_p = measures.length_ks(lengths, real_lengths)
        test.vocab_js = measures.vocab_js(mine, sample.texts)
        if vectors.size and sample.vectors.size:
            test.mmd, test.mmd_p = measures.mmd_rbf(vectors[rows], sample.vectors, seed=seed)
        for name, value, bound in (("length KS", test.length_ks, cfg.shift_max_length_ks),
                                   ("vocabulary JS", test.vocab_js, cfg.shift_max_vocab_js),
                                   ("embedding MMD²", test.mmd, cfg.shift_max_mmd)):
            if bound is not None and value == value and value > bound:
                test.shifted.append(f"{name} {value:.3f} > {bound:g}")
        # collapse: compare with a real sample of the batch's size (distinct-n falls as a sample grows)
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(sample.texts), size=min(len(rows), len(sample.texts)), replace=False)
        test.distinct2 = measures.distinct_n(mine, 2)
        test.real_distinct2 = measures.distinct_n([sample.texts[i] for i in pick], 2)
        if vectors.size and sample.vectors.size:
            test.dispersion = measures.dispersion(vectors[rows])
            test.real_dispersion = measures.dispersion(sample.vectors[pick])
        floor = 1.0 - cfg.collapse_margin
        for name, mine_value, real_value in (("distinct-2", test.distinct2, test.real_distinct2),
                                             ("embedding dispersion", test.dispersion, test.real_dispersion)):
            if mine_value == mine_value and real_value == real_value and mine_value < real_value * floor:
                test.collapsed.append(f"{name} {mine_value:.3f} < {floor:.2f} x real {real_value:.3f}")
        if test.collapsed:
            log.warning("mode-collapse alarm for domain %s: %s", domain, "; ".join(test.collapsed))
        held = test.shifted + (test.collapsed if cfg.collapse_action == "hold" else [])
        if held:
            reason[rows] = DISTRIBUTION_SHIFT
            detail[rows] = f"batch of {len(rows)} held back: " + "; ".join(held)
    return out


def _cap(reason: np.ndarray, detail: np.ndarray, judge: np.ndarray, quality: np.ndarray, allowed: int) -> None:
    """Keep at most ``allowed`` accepted rows: the best judged (then highest quality) stay."""
    accepted = np.flatnonzero(reason == None)  # noqa: E711
    if len(accepted) <= allowed:
        return
    order = np.lexsort((accepted, -np.nan_to_num(quality[accepted], nan=-1.0),
                        -np.nan_to_num(judge[accepted], nan=-1.0)))
    over = accepted[order[allowed:]]
    reason[over] = OVER_CAP
    detail[over] = f"beyond max_share: the partition may hold {allowed} synthetic rows"


def _stored(threshold: float) -> float:
    """Return ``threshold`` as the float32 ``generation`` stores measures in: a measure at the threshold (a Jaccard
    of 7/10 against 0.7) then counts as at it, not a rounding error below or above it."""
    return float(np.float32(threshold))


def _field(table: pa.Table, name: str) -> np.ndarray:
    column = pc.struct_field(table.column("generation"), name)
    if pa.types.is_floating(column.type):
        return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
    return np.asarray(column.to_pylist(), dtype=object)


def signature_matrix(column: pa.ChunkedArray, num_perm: int) -> np.ndarray:
    arr = column.combine_chunks()
    return np.frombuffer(arr.buffers()[1], dtype="<u4")[arr.offset * num_perm:(arr.offset + len(arr))
                                                        * num_perm].reshape(len(arr), num_perm)


def _vectors(column: pa.ChunkedArray) -> np.ndarray:
    arr = column.combine_chunks()
    if len(arr) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    dim = arr.type.list_size
    return arr.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(arr), dim)
