"""Active-learning strategies on toy geometry where the right pick is known."""

from __future__ import annotations

import math
import time
import tracemalloc

import numpy as np
import pytest

from dctp_tasks.feedback import strategies
from dctp_tasks.feedback.strategies import (
    allocate,
    bootstrap_committee,
    closeness,
    entropy,
    k_center_greedy,
    kl_to_mean,
    least_confidence,
    logistic_regression,
    margin,
    random_pick,
    top_k,
    vote_entropy,
)

UNCERTAINTY = (least_confidence, margin, entropy)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# --- uncertainty -----------------------------------------------------------------------------------------------------

def test_uncertainty_values_at_the_boundary_and_at_certainty():
    p = np.array([0.5, 1.0, 0.0, 0.8])
    np.testing.assert_allclose(least_confidence(p), [0.5, 0.0, 0.0, 0.2])
    np.testing.assert_allclose(margin(p), [1.0, 0.0, 0.0, 0.4])
    np.testing.assert_allclose(entropy(p), [math.log(2), 0.0, 0.0, -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))])
    assert entropy(np.array([1.0]))[0] == 0.0 and not np.signbit(entropy(np.array([1.0]))[0])


def test_binary_p_equals_its_two_column_form_and_k_classes_work():
    p = np.array([0.1, 0.35, 0.5, 0.93])
    two = np.stack([1 - p, p], axis=1)
    for fn in UNCERTAINTY:
        np.testing.assert_allclose(fn(p), fn(two))
    k3 = np.array([[1 / 3, 1 / 3, 1 / 3], [0.7, 0.2, 0.1], [0.4, 0.4, 0.2], [0.1, 0.3, 0.6]])
    np.testing.assert_allclose(least_confidence(k3), [2 / 3, 0.3, 0.6, 0.4])
    np.testing.assert_allclose(margin(k3), [1.0, 0.5, 1.0, 0.7])
    np.testing.assert_allclose(entropy(k3)[0], math.log(3))


@pytest.mark.parametrize("fn", UNCERTAINTY)
def test_uncertainty_picks_the_docs_at_the_decision_boundary(fn):
    x = np.linspace(-3, 3, 61) + 0.013  # offset: no two docs equally far from the boundary at x = 0
    p = _sigmoid(4 * x)
    p[30] = np.nan  # the doc nearest the boundary has no prediction: it is never picked
    scores = fn(p)
    assert np.isnan(scores[30]) and np.isfinite(np.delete(scores, 30)).all()
    picked = top_k(scores, 4)
    assert picked.tolist() == [29, 31, 28, 32]  # |x| = 0.087, 0.113, 0.187, 0.213


def test_probabilities_outside_0_1_are_named():
    with pytest.raises(ValueError, match=r"margin: probabilities must lie in \[0, 1\].*found 1.5 at \(1,\)"):
        margin(np.array([0.2, 1.5]))
    with pytest.raises(ValueError, match=r"entropy: p must be \(n,\).*got shape \(2, 1\)"):
        entropy(np.array([[0.2], [0.3]]))


def test_closeness_is_highest_on_the_line_and_keeps_nan():
    values = np.array([0.1, 0.48, 0.5, 0.9, np.nan, 0.55])
    np.testing.assert_allclose(closeness(values, 0.5), [0.6, 0.98, 1.0, 0.6, np.nan, 0.95])
    gaussian = closeness(values, 0.5, spread=0.1)
    np.testing.assert_allclose(gaussian[[2, 5]], [1.0, math.exp(-0.125)])
    assert top_k(gaussian, 3).tolist() == [2, 1, 5] == top_k(closeness(values, 0.5), 3).tolist()
    with pytest.raises(ValueError, match="spread must be a positive number, got 0"):
        closeness(values, 0.5, spread=0)
    with pytest.raises(ValueError, match="line must be a finite number, got nan"):
        closeness(values, float("nan"))


# --- query by committee ----------------------------------------------------------------------------------------------

def test_vote_entropy_is_zero_when_unanimous_and_picks_the_split_docs():
    nan = np.nan
    votes = np.array([[1, 1, 1, 1],        # unanimous pass
                      [1, 0, 1, 0],        # 2 / 2
                      [1, 1, 1, 0],        # 3 / 1
                      [0, 0, 0, 0],        # unanimous fail
                      [1, 0, nan, nan],    # 1 / 1 among those who voted
                      [nan, nan, nan, nan],
                      [1, nan, nan, nan]])  # one voter: no disagreement
    h = vote_entropy(votes)
    q = 0.75
    np.testing.assert_allclose(h, [0, math.log(2), -(q * math.log(q) + (1 - q) * math.log(1 - q)), 0,
                                   math.log(2), nan, 0])
    assert top_k(h, 3).tolist() == [1, 4, 2]
    with pytest.raises(ValueError, match=r"votes must be 0, 1 or NaN; votes\[1, 2\] = 0.5"):
        vote_entropy(np.array([[1, 0, 1], [1, 1, 0.5]]))


def test_kl_to_mean_is_zero_for_agreement_and_highest_where_the_committee_splits():
    members = np.array([[0.9, 0.1, 0.6, 0.2, np.nan],
                        [0.9, 0.9, 0.7, 0.2, np.nan],
                        [0.9, 0.5, 0.65, np.nan, np.nan]])
    kl = kl_to_mean(members)
    mean = 0.5

    def kl_bernoulli(p, q):
        return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))

    expected_1 = (kl_bernoulli(0.1, mean) + kl_bernoulli(0.9, mean) + kl_bernoulli(0.5, mean)) / 3
    np.testing.assert_allclose(kl[:4], [0.0, expected_1, kl[2], 0.0], atol=1e-15)
    assert 0 < kl[2] < 0.01 and np.isnan(kl[4])  # mild disagreement; nobody predicted doc 4
    assert top_k(kl, 2).tolist() == [1, 2]
    three_class = np.stack([1 - members, members], axis=-1)
    np.testing.assert_allclose(kl_to_mean(three_class), kl, atol=1e-15)
    certain = kl_to_mean(np.array([[0.0], [1.0]]))  # clipped, so finite: each member is ln 2 from the mean 0.5
    np.testing.assert_allclose(certain, [math.log(2)], rtol=1e-9)


def test_bootstrap_committee_disagrees_most_at_the_boundary_of_a_separable_set():
    rng = np.random.default_rng(3)
    x = rng.uniform(-3, 3, size=80)
    labeled = np.stack([x, rng.normal(0, 0.5, size=80)], axis=1)
    y = (x > 0).astype(np.int64)
    pool = np.array([[-3.0, 0.0], [-1.5, 0.0], [0.05, 0.0], [1.5, 0.0], [3.0, 0.0]])
    committee = bootstrap_committee(labeled, y, pool, members=7, seed=0)
    assert committee.shape == (7, 5) and committee.dtype == np.float64
    assert (committee[:, 0] < 0.2).all() and (committee[:, 4] > 0.8).all()
    assert np.argmax(kl_to_mean(committee)) == 2 and np.argmax(committee.std(axis=0)) == 2
    np.testing.assert_array_equal(committee, bootstrap_committee(labeled, y, pool, members=7, seed=0))
    assert not np.array_equal(committee, bootstrap_committee(labeled, y, pool, members=7, seed=1))


def test_bootstrap_committee_falls_back_to_the_full_set_with_fit_classifier_settings(monkeypatch):
    monkeypatch.setattr(strategies, "_BOOTSTRAP_ATTEMPTS", 0)  # every resample "lacks a class"
    rng = np.random.default_rng(0)
    labeled = rng.normal(size=(30, 4)).astype(np.float32)
    y = (labeled[:, 0] > 0).astype(np.int64)
    pool = rng.normal(size=(9, 4)).astype(np.float16)
    committee = bootstrap_committee(labeled, y, pool, members=3, c=0.5)
    full = logistic_regression(0.5).fit(labeled, y).predict_proba(pool.astype(np.float64))[:, 1]
    for member in committee:
        np.testing.assert_allclose(member, full, rtol=1e-10)
    params = logistic_regression().get_params()
    assert (params["C"], params["class_weight"], params["max_iter"]) == (1.0, "balanced", 2000)


def test_bootstrap_committee_needs_two_of_each_class():
    labeled = np.zeros((6, 2))
    with pytest.raises(ValueError, match="y holds 1 positive and 5 negative labels; a committee needs at least 2"):
        bootstrap_committee(labeled, np.array([1, 0, 0, 0, 0, 0]), labeled)
    with pytest.raises(ValueError, match=r"y must be 0/1, found \[0, 2\]"):
        bootstrap_committee(labeled, np.array([2, 0, 0, 0, 2, 0]), labeled)


# --- core set --------------------------------------------------------------------------------------------------------

def _clusters_and_outliers() -> tuple[np.ndarray, np.ndarray]:
    """Three tight clusters of 30 (A at (0, 0), B at (10, 0), C at (0, 10)) and two outliers; row -> group."""
    rng = np.random.default_rng(7)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    rows = [c + rng.normal(0, 0.1, size=(30, 2)) for c in centers]
    outliers = np.array([[30.0, 30.0], [-20.0, 5.0]])
    vectors = np.concatenate([rows[0], outliers[:1], rows[1], rows[2], outliers[1:]]).astype(np.float32)
    group = np.array(["A"] * 30 + ["out1"] + ["B"] * 30 + ["C"] * 30 + ["out2"])
    return vectors, group


def test_k_center_picks_the_outliers_then_one_per_cluster():
    vectors, group = _clusters_and_outliers()
    picked = k_center_greedy(vectors, 6)
    assert picked.dtype == np.int64 and len(set(picked.tolist())) == 6
    # Farthest from the mean: out1; then out2; then B (30 from out2), C (14 from out1..), A (10 from B and C).
    assert group[picked].tolist()[:5] == ["out1", "out2", "B", "C", "A"]
    assert picked[0] == 30 and picked[1] == 91


def test_k_center_with_centers_skips_the_covered_cluster():
    vectors, group = _clusters_and_outliers()
    picked = k_center_greedy(vectors, 4, centers=vectors[group == "A"])
    assert sorted(group[picked].tolist()) == ["B", "C", "out1", "out2"]
    assert k_center_greedy(vectors, 4, centers=vectors[:0]).tolist() == k_center_greedy(vectors, 4).tolist()


def test_k_center_edge_cases():
    vectors, _ = _clusters_and_outliers()
    assert k_center_greedy(vectors, len(vectors)).tolist() == list(range(len(vectors)))
    assert k_center_greedy(vectors, 10_000).tolist() == list(range(len(vectors)))
    assert k_center_greedy(vectors, 0).tolist() == []
    same = np.ones((5, 3), dtype=np.float32)
    assert sorted(k_center_greedy(same, 3).tolist()) == [0, 1, 2]  # duplicates: distinct rows, lowest first
    with pytest.raises(ValueError, match=r"centers must be \(c, 2\) like vectors, got shape \(1, 3\)"):
        k_center_greedy(vectors, 2, centers=np.ones((1, 3)))
    with pytest.raises(ValueError, match="k must be >= 0, got -1"):
        k_center_greedy(vectors, -1)


def _reference_k_center(vectors: np.ndarray, k: int, centers: np.ndarray | None = None) -> list[int]:
    """Greedy k-center in float64 with explicit differences (no norm expansion, no chunks)."""
    x = vectors.astype(np.float64)
    nearest = np.full(len(x), np.inf)
    if centers is not None:
        for c in centers.astype(np.float64):
            nearest = np.minimum(nearest, ((x - c) ** 2).sum(axis=1))
        picks: list[int] = []
    else:
        picks = [int(np.argmax(((x - x.mean(axis=0)) ** 2).sum(axis=1)))]
        nearest = ((x - x[picks[0]]) ** 2).sum(axis=1)
    while len(picks) < k:
        nearest[picks] = -np.inf
        picks.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, ((x - x[picks[-1]]) ** 2).sum(axis=1))
    return picks


@pytest.mark.parametrize("chunk_rows", [7, 300, 32_768])
def test_k_center_matches_a_brute_force_reference(chunk_rows):
    rng = np.random.default_rng(11)
    vectors = rng.normal(size=(300, 16))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    assert k_center_greedy(vectors, 40, chunk_rows=chunk_rows).tolist() == _reference_k_center(vectors, 40)
    labeled = vectors[:25]
    assert k_center_greedy(vectors, 40, centers=labeled, chunk_rows=chunk_rows).tolist() == \
        _reference_k_center(vectors, 40, labeled)


def test_k_center_on_20k_float16_rows_is_exact_fast_and_never_builds_an_n_by_n_matrix():
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(20_000, 32))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16)
    centers = vectors[rng.choice(20_000, 100, replace=False)]
    tracemalloc.start()
    start = time.perf_counter()
    picked = k_center_greedy(vectors, 50, centers=centers, chunk_rows=4096)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert picked.tolist() == _reference_k_center(vectors, 50, centers)
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB: an n x n float32 matrix would be 1,526 MiB"
    assert seconds < 5.0


# --- picking and splitting a budget ---------------------------------------------------------------------------------

def test_top_k_ignores_nan_and_inf_and_breaks_ties_by_lower_index():
    scores = np.array([1.0, 3.0, 3.0, np.nan, 2.0, 3.0, np.inf, -np.inf])
    assert top_k(scores, 2).tolist() == [1, 2]
    assert top_k(scores, 4).tolist() == [1, 2, 5, 4]
    assert top_k(scores, 100).tolist() == [1, 2, 5, 4, 0]
    assert top_k(scores, 3, exclude=[1]).tolist() == [2, 5, 4]
    assert top_k(scores, 3, exclude=np.array([0, 1, 0, 0, 0, 0, 0, 0], dtype=bool)).tolist() == [2, 5, 4]
    assert top_k(scores, 0).tolist() == [] and top_k(np.full(4, np.nan), 2).tolist() == []
    with pytest.raises(ValueError, match="exclude index 9 is outside 0..7"):
        top_k(scores, 1, exclude=[9])


def test_top_k_on_a_million_tied_scores_equals_a_full_stable_sort():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 1000, size=1_000_000).astype(np.float64)
    scores[rng.choice(1_000_000, 1000, replace=False)] = np.nan
    order = np.lexsort((np.arange(len(scores)), -np.nan_to_num(scores, nan=-np.inf)))
    start = time.perf_counter()
    picked = top_k(scores, 5000)
    seconds = time.perf_counter() - start
    assert picked.tolist() == order[:5000].tolist()
    assert seconds < 1.0


def test_allocate_proportional_with_minimums():
    assert allocate(np.array([600, 300, 100]), 100).tolist() == [60, 30, 10]
    # Shares 48.5 / 1 / 0.5: the small strata are raised to 3, the large one gives up the difference.
    assert allocate(np.array([970, 20, 10]), 50, minimum=3).tolist() == [44, 3, 3]
    assert allocate(np.array([90, 10, 0]), 10).tolist() == [9, 1, 0]  # an empty stratum needs no minimum
    # A 2-row stratum keeps its minimum; the two equal remainders (299.5) go by lower index.
    assert allocate(np.array([2, 1000, 1000]), 600).tolist() == [1, 300, 299]
    assert allocate(np.array([2, 1000]), 600, minimum=5).tolist() == [2, 598]  # minimum capped by size


def test_allocate_never_exceeds_a_stratum_and_sums_to_what_exists():
    assert allocate(np.array([3, 0, 5]), 100).tolist() == [3, 0, 5]
    assert allocate(np.array([3, 0, 5]), 100, mode="equal").tolist() == [3, 0, 5]
    assert allocate(np.array([1, 1, 1]), 0).tolist() == [0, 0, 0]


def test_allocate_gives_the_minimum_to_the_largest_strata_first_when_the_budget_is_short():
    sizes = np.array([5, 50, 20, 1])
    assert allocate(sizes, 3).tolist() == [1, 1, 1, 0]
    assert allocate(sizes, 3, minimum=2).tolist() == [0, 2, 1, 0]
    assert allocate(np.array([10, 10, 10]), 2).tolist() == [1, 1, 0]


def test_allocate_equal_redistributes_what_small_strata_cannot_take():
    assert allocate(np.array([5, 100, 100]), 30, mode="equal").tolist() == [5, 13, 12]
    assert allocate(np.array([10, 10, 10]), 7, mode="equal").tolist() == [3, 2, 2]
    assert allocate(np.array([10, 50, 100]), 7, mode="equal").tolist() == [2, 2, 3]  # leftover: largest first
    assert allocate(np.array([600, 300, 100]), 90, mode="equal").tolist() == [30, 30, 30]
    assert allocate(np.array([600, 300, 100]), 90).tolist() == [54, 27, 9]


def test_allocate_invariants_on_random_cases():
    rng = np.random.default_rng(42)
    for _ in range(500):
        sizes = rng.integers(0, 40, size=rng.integers(1, 8)) * rng.integers(0, 2, size=1)[0] + \
            rng.integers(0, 3, size=1)[0]
        budget = int(rng.integers(0, 200))
        minimum = int(rng.integers(0, 4))
        for mode in ("proportional", "equal"):
            out = allocate(sizes, budget, mode=mode, minimum=minimum)
            assert out.sum() == min(budget, sizes.sum()), (sizes, budget, mode, out)
            assert (out >= 0).all() and (out <= sizes).all(), (sizes, budget, mode, out)
            assert np.array_equal(out, allocate(sizes, budget, mode=mode, minimum=minimum))
            floor = np.minimum(minimum, sizes)
            if mode == "proportional" and budget >= floor.sum():
                assert (out >= floor).all(), (sizes, budget, minimum, out)


def test_allocate_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="unknown mode 'random'; use one of proportional, equal"):
        allocate(np.array([1, 2]), 2, mode="random")
    with pytest.raises(ValueError, match=r"sizes must be non-negative integers, got \[3, -1\]"):
        allocate(np.array([3, -1]), 2)
    with pytest.raises(ValueError, match="budget=-2"):
        allocate(np.array([3, 1]), -2)


def test_random_pick_is_distinct_and_reproducible():
    a = random_pick(1000, 50, seed=3)
    assert a.dtype == np.int64 and len(set(a.tolist())) == 50 and a.min() >= 0 and a.max() < 1000
    assert a.tolist() == random_pick(1000, 50, seed=3).tolist() != random_pick(1000, 50, seed=4).tolist()
    assert sorted(random_pick(5, 9, seed=0).tolist()) == [0, 1, 2, 3, 4]
    rng = np.random.default_rng(3)
    assert random_pick(1000, 50, rng).tolist() == a.tolist()
    assert random_pick(1000, 50, rng).tolist() != a.tolist()  # a generator moves on
