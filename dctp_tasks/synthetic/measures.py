"""Pure statistical measures behind the synthetic-data safeguards: copies (ROUGE-L novelty), grounding, mode collapse
(distinct-n, dispersion), distribution shift (KS, Jensen-Shannon, MMD) and reward hacking (residual z-scores).
Every function takes plain lists or arrays and returns floats or float64/bool arrays; NaN means "cannot tell"."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
from scipy import sparse
from scipy.spatial.distance import jensenshannon, pdist
from scipy.stats import ks_2samp

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_FIRST_BATCH = 32  # candidates scored per batched LCS pass in novel_prompts; doubles while the bound stays open
RIDGE = 1e-6  # on standardised features: only keeps collinear or constant columns solvable

# Common English function words (articles, pronouns, auxiliaries, prepositions, conjunctions): an answer built from
# these alone says nothing that a chunk could support or contradict.
STOP_WORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers him
his how i if in into is it its itself just me more most my no nor not of off on once only or other our ours out over
own same she should so some such than that the their theirs them then there these they this those through to too
under until up very was we were what when where which while who whom why will with would you your yours
""".split())


def tokenize(text: str | None) -> list[str]:
    """Split like rouge_score's default tokenizer: lowercase, every non-[a-z0-9] run is a separator, no stemming."""
    if not text:
        return []
    return _NON_ALNUM.sub(" ", text.lower()).split()


def _f1(lcs: np.ndarray | int, la: np.ndarray | int, lb: np.ndarray | int) -> np.ndarray | float:
    # 2PR/(P+R) with P = lcs/la, R = lcs/lb, written as one division so it is monotone in lcs in floating point:
    # novel_prompts relies on that to prune with an upper bound and still return exactly the brute-force scores.
    return 2.0 * lcs / np.maximum(la + lb, 1)


def _lcs_batch(query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Longest common subsequence length of ``query`` with each row of ``candidates`` (ids, right-padded with -1)."""
    dp = np.zeros((candidates.shape[0], candidates.shape[1] + 1), dtype=np.int32)
    for tok in query:
        # Row update of the classic DP: on a match take the diagonal + 1, else the cell above; a running max along
        # the row then supplies the "cell to the left" term, which is what makes the row vectorisable.
        step = np.where(candidates == tok, dp[:, :-1] + 1, dp[:, 1:])
        dp[:, 1:] = np.maximum.accumulate(step, axis=1)
    return dp[:, -1]


def rouge_l(a: list[str], b: list[str]) -> float:
    """ROUGE-L F1 (beta = 1) of two token lists; 0.0 when either is empty."""
    if not a or not b:
        return 0.0
    ids: dict[str, int] = {}
    ia = np.array([ids.setdefault(t, len(ids)) for t in a])
    ib = np.array([ids.setdefault(t, len(ids)) for t in b])
    short, long = (ia, ib) if len(ia) <= len(ib) else (ib, ia)  # one numpy pass per token of the shorter list
    return float(_f1(int(_lcs_batch(short, long[None, :])[0]), len(a), len(b)))


def novel_prompts(prompts: list[str], accepted: list[str], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep each prompt whose ROUGE-L F1 against every accepted prompt and every prompt kept before it is <= threshold.

    Returns the keep mask and each prompt's exact max ROUGE-L against that pool (0.0 for an empty pool). Pairs are
    scored in decreasing order of the bound F1 <= 2m / (la + lb), m the multiset token overlap, and scoring stops
    once the best score reaches the next bound, so most pairs never run the LCS yet the result equals brute force.
    """
    ids: dict[str, int] = {}
    docs = [np.array([ids.setdefault(t, len(ids)) for t in tokenize(text)], dtype=np.int64)
            for text in [*accepted, *prompts]]
    n_acc, n_docs = len(accepted), len(accepted) + len(prompts)
    lens = np.array([len(d) for d in docs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    flat = np.concatenate([*docs, np.array([-1])])  # sentinel: never empty, so clipped gathers below are valid
    # Documents x tokens count matrix, by column, so one prompt's overlap with every document is a few column slices.
    doc_of = np.repeat(np.arange(n_docs), lens)
    counts = sparse.csc_array((np.ones(len(doc_of)), (doc_of, flat[:-1])), shape=(n_docs, max(len(ids), 1)))
    counts.sum_duplicates()

    in_pool = np.zeros(n_docs, dtype=bool)
    in_pool[:n_acc] = True
    keep = np.zeros(len(prompts), dtype=bool)
    best = np.zeros(len(prompts))
    for i in range(len(prompts)):
        row, query = n_acc + i, docs[n_acc + i]
        if len(query):
            uniq, qcount = np.unique(query, return_counts=True)
            cols = counts[:, uniq]
            overlap = np.minimum(cols.data, np.repeat(qcount, np.diff(cols.indptr)))
            m = np.bincount(cols.indices, weights=overlap, minlength=n_docs)
            cand = np.flatnonzero(in_pool & (m > 0))  # no overlap: LCS is 0, which the 0.0 start already covers
            bound = _f1(m[cand], lens[cand], len(query))
            order = np.argsort(-bound, kind="stable")
            cand, bound = cand[order], bound[order]
            pos, size = 0, _FIRST_BATCH
            while pos < len(cand) and bound[pos] > best[i]:
                batch = cand[pos:pos + size][bound[pos:pos + size] > best[i]]
                width = int(lens[batch].max())
                gather = offsets[batch][:, None] + np.arange(width)
                padded = np.where(np.arange(width) < lens[batch][:, None], flat[np.minimum(gather, len(flat) - 1)], -1)
                scores = _f1(_lcs_batch(query, padded), lens[batch], len(query))
                best[i] = max(best[i], float(scores.max()))
                pos, size = pos + size, size * 2
        keep[i] = best[i] <= threshold
        in_pool[row] = keep[i]
    return keep, best


def _content_words(tokens: list[str]) -> list[str]:
    return [t for t in tokens if t not in STOP_WORDS and not (t.isdigit() and len(t) < 2)]


def grounding(answers: list[str | None], chunks: list[str | None]) -> np.ndarray:
    """Share (0-1) of each answer's content-word tokens that occur in its chunk.

    Tokens are counted with repetition; an empty or None answer scores 0.0, one made only of stop words 1.0.
    """
    if len(answers) != len(chunks):
        raise ValueError(f"grounding needs one chunk per answer, got {len(answers)} answers and {len(chunks)} chunks")
    out = np.zeros(len(answers))
    for i, (answer, chunk) in enumerate(zip(answers, chunks)):
        tokens = tokenize(answer)
        if not tokens:
            continue
        words = _content_words(tokens)
        if not words:
            out[i] = 1.0
            continue
        source = set(tokenize(chunk))
        out[i] = sum(w in source for w in words) / len(words)
    return out


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct n-grams over total n-grams across all texts (Li et al. 2016); n-grams never span two texts."""
    grams: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        tokens = tokenize(text)
        grams.update(zip(*(tokens[k:] for k in range(n))))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def dispersion(vectors: np.ndarray) -> float:
    """Mean cosine distance of the rows to their centroid direction; 0.0 with fewer than 2 usable rows.

    Zero and non-finite rows have no direction and are left out. With unit rows u_i and centroid c = mean(u_i),
    mean(u_i . c / |c|) = |c|, so the measure is 1 - |c| (1.0 when the directions cancel out).
    """
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"dispersion needs a 2-D array of row vectors, got shape {v.shape}")
    norms = np.linalg.norm(v, axis=1)
    usable = np.isfinite(norms) & (norms > 0)
    if usable.sum() < 2:
        return 0.0
    centroid = (v[usable] / norms[usable, None]).mean(axis=0)
    return float(np.clip(1.0 - np.linalg.norm(centroid), 0.0, 1.0))


def length_ks(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and p-value, NaNs left out; (nan, nan) when a side is empty."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if not len(a) or not len(b):
        return float("nan"), float("nan")
    res = ks_2samp(a, b)
    return float(res.statistic), float(res.pvalue)


def vocab_js(a: list[str], b: list[str]) -> float:
    """Jensen-Shannon divergence (base 2, 0-1) between the unigram distributions of two sets of texts."""
    ca = Counter(t for text in a for t in tokenize(text))
    cb = Counter(t for text in b for t in tokenize(text))
    if not ca or not cb:
        return float("nan")
    vocab = list(ca.keys() | cb.keys())
    p = np.array([ca[t] for t in vocab], dtype=np.float64)
    q = np.array([cb[t] for t in vocab], dtype=np.float64)
    return float(np.clip(jensenshannon(p, q, base=2) ** 2, 0.0, 1.0))


def _as_rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[:, None] if a.ndim == 1 else a


def mmd_rbf(x: np.ndarray, y: np.ndarray, permutations: int = 200, seed: int = 0,
            max_rows: int = 500) -> tuple[float, float]:
    """Unbiased squared MMD with an RBF kernel (median-heuristic bandwidth) and its permutation-test p-value.

    Rows with a non-finite value are left out and each side is subsampled to ``max_rows`` (seeded); (nan, nan) when
    a side has fewer than 2 rows. p = (1 + #permuted >= observed) / (1 + permutations).
    """
    rng = np.random.default_rng(seed)
    sides = []
    for s in (x, y):
        s = _as_rows(s)
        s = s[np.isfinite(s).all(axis=1)]
        if len(s) > max_rows:
            s = s[np.sort(rng.choice(len(s), max_rows, replace=False))]
        sides.append(s)
    x, y = sides
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        return float("nan"), float("nan")
    pooled = np.vstack([x, y])
    dist = pdist(pooled)
    sigma = float(np.median(dist)) or 1.0  # all rows identical: any bandwidth gives MMD 0
    kernel = np.ones((n + m, n + m))
    iu = np.triu_indices(n + m, k=1)
    kernel[iu] = np.exp(-(dist**2) / (2.0 * sigma**2))  # pdist order is the row-major upper triangle
    kernel = np.triu(kernel, 1)
    kernel += kernel.T  # zero diagonal: the unbiased estimator drops the k(x_i, x_i) terms

    # Row 0 is the observed split; each further row a random relabelling. With A the x-indicators, every within- and
    # between-group kernel sum follows from A @ K: one matrix product scores all permutations.
    labels = np.zeros((permutations + 1, n + m))
    labels[0, :n] = 1.0
    for p in range(1, permutations + 1):
        labels[p, rng.permutation(n + m)[:n]] = 1.0
    ak = labels @ kernel
    s_xx = np.einsum("ij,ij->i", ak, labels)
    s_x_all = ak.sum(axis=1)
    s_xy = s_x_all - s_xx
    s_yy = kernel.sum() - 2.0 * s_x_all + s_xx
    stats = s_xx / (n * (n - 1)) + s_yy / (m * (m - 1)) - 2.0 * s_xy / (n * m)
    observed = stats[0]
    tol = 1e-12 * max(1.0, abs(observed))  # same split reached by a permutation must count as a tie, not a loss
    p_value = (1 + int((stats[1:] >= observed - tol).sum())) / (1 + permutations)
    return float(observed), float(p_value)


def reward_residual_z(real_features: np.ndarray, real_target: np.ndarray, features: np.ndarray, target: np.ndarray,
                      min_rows: int = 10) -> np.ndarray:
    """Per generated row: how far the classifiers' score lies above what perplexity and heuristics predict, in SDs.

    A ridge-stabilised linear model with intercept is fitted on the real rows (features -> target); z = (target -
    prediction) / residual SD, the SD with one degree of freedom per fitted coefficient. NaN features take the real
    column mean (a column with no real value is dropped); a NaN target gives NaN; all NaN with fewer than
    ``min_rows`` real rows with a target, or when the real rows are fitted exactly.
    """
    rf, gf = _as_rows(real_features), _as_rows(features)
    rt, gt = np.asarray(real_target, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if rf.shape[1] != gf.shape[1] or len(rf) != len(rt) or len(gf) != len(gt):
        raise ValueError(f"reward_residual_z: shapes disagree: real {rf.shape} / {rt.shape}, "
                         f"generated {gf.shape} / {gt.shape}")
    out = np.full(len(gt), np.nan)
    usable = ~np.isnan(rt)
    rf, rt = rf[usable], rt[usable]
    if len(rt) < max(min_rows, 1):
        return out
    seen = ~np.isnan(rf).all(axis=0)
    rf, gf = rf[:, seen], gf[:, seen]
    n_coef = 1 + rf.shape[1]
    if len(rt) <= n_coef:
        return out
    mean = np.nanmean(rf, axis=0)
    rf, gf = np.where(np.isnan(rf), mean, rf), np.where(np.isnan(gf), mean, gf)
    # Standardised on the real rows so one ridge value means the same for perplexity (~100s) and scores (0-1).
    scale = rf.std(axis=0)
    scale[scale == 0] = 1.0
    xr = np.column_stack([np.ones(len(rf)), (rf - mean) / scale])
    xg = np.column_stack([np.ones(len(gf)), (gf - mean) / scale])
    penalty = np.eye(n_coef) * RIDGE
    penalty[0, 0] = 0.0  # the intercept is not shrunk
    coef = np.linalg.solve(xr.T @ xr + penalty, xr.T @ rt)
    residuals = rt - xr @ coef
    sd = float(np.sqrt((residuals**2).sum() / (len(rt) - n_coef)))
    # An exact fit leaves only ridge shrinkage and rounding (~1e-7 of the target's spread): no usable SD.
    if sd <= 1e-5 * float(rt.std()):
        return out
    has_target = ~np.isnan(gt)
    out[has_target] = (gt[has_target] - xg[has_target] @ coef) / sd
    return out
