"""Synthetic-data measures: known values, and agreement with slow reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dctp_tasks.synthetic import measures
from dctp_tasks.synthetic.measures import (
    STOP_WORDS,
    dispersion,
    distinct_n,
    grounding,
    length_ks,
    mmd_rbf,
    novel_prompts,
    reward_residual_z,
    rouge_l,
    tokenize,
    vocab_js,
)


def reference_lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def reference_novel(prompts: list[str], accepted: list[str], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    pool = [tokenize(p) for p in accepted]
    keep, best = [], []
    for prompt in prompts:
        tokens = tokenize(prompt)
        score = max((rouge_l(tokens, other) for other in pool), default=0.0)
        keep.append(score <= threshold)
        best.append(score)
        if keep[-1]:
            pool.append(tokens)
    return np.array(keep), np.array(best)


@pytest.mark.parametrize(("text", "tokens"), [
    ("The Cat, sat!", ["the", "cat", "sat"]),
    ("e-mail: A.B@x.org", ["e", "mail", "a", "b", "x", "org"]),
    ("Café naïve 3.14", ["caf", "na", "ve", "3", "14"]),  # non-ASCII letters separate, as in rouge_score
    ("  \t\n", []),
    ("", []),
    (None, []),
])
def test_tokenize(text, tokens):
    assert tokenize(text) == tokens


def test_rouge_l_known_values():
    assert rouge_l(tokenize("the cat sat"), tokenize("The cat sat.")) == 1.0
    assert rouge_l(tokenize("the cat sat on the mat"), tokenize("the cat is on the mat")) == pytest.approx(5 / 6)
    assert rouge_l(tokenize("a b c"), tokenize("d e f")) == 0.0
    assert rouge_l([], ["a"]) == 0.0
    assert rouge_l(["a"], []) == 0.0
    # LCS "a c" (2) of lengths 3 and 5: F1 = 2 * 2 / 8
    assert rouge_l(["a", "b", "c"], ["x", "a", "y", "c", "z"]) == pytest.approx(0.5)


def test_rouge_l_matches_reference_lcs():
    rng = np.random.default_rng(7)
    vocab = [f"w{i}" for i in range(6)]
    for _ in range(200):
        a = list(rng.choice(vocab, rng.integers(1, 25)))
        b = list(rng.choice(vocab, rng.integers(1, 25)))
        expected = 2 * reference_lcs(a, b) / (len(a) + len(b))
        assert rouge_l(a, b) == pytest.approx(expected, abs=1e-12)
        assert rouge_l(a, b) == rouge_l(b, a)


def test_novel_prompts_rules():
    accepted = ["Write a short poem about the sea.", "Explain how a bicycle gear works."]
    prompts = [
        "write a short poem about the sea",  # exact copy, only case and punctuation differ
        "Write a short poem about the ocean.",  # 6/7 overlap: a paraphrase
        "List three uses of baking soda in cleaning.",  # unrelated
        "Translate this sentence into French please.",  # kept, then repeated
        "Translate this sentence into French please.",
    ]
    keep, best = novel_prompts(prompts, accepted, threshold=0.7)
    assert keep.tolist() == [False, False, True, True, False]
    assert best[0] == 1.0
    assert best[1] == pytest.approx(6 / 7)
    assert best[2] < 0.7
    assert best[4] == 1.0
    assert keep.dtype == bool and best.dtype == np.float64


def test_novel_prompts_empty_pool_and_inputs():
    keep, best = novel_prompts(["anything at all"], [], threshold=0.7)
    assert keep.tolist() == [True] and best.tolist() == [0.0]
    keep, best = novel_prompts([], ["accepted"], threshold=0.7)
    assert keep.shape == (0,) and best.shape == (0,)
    keep, best = novel_prompts(["", "!!"], ["a prompt"], threshold=0.7)
    assert keep.tolist() == [True, True] and best.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_novel_prompts_prefilter_equals_brute_force(threshold, monkeypatch):
    rng = np.random.default_rng(11)
    vocab = [f"w{i}" for i in range(10)]
    texts = [" ".join(rng.choice(vocab, rng.integers(0, 12))) for _ in range(330)]
    accepted, prompts = texts[:30], texts[30:]
    scored = []
    lcs_batch = measures._lcs_batch
    monkeypatch.setattr(measures, "_lcs_batch", lambda q, c: scored.append(len(c)) or lcs_batch(q, c))
    keep, best = novel_prompts(prompts, accepted, threshold)
    monkeypatch.undo()
    ref_keep, ref_best = reference_novel(prompts, accepted, threshold)
    assert np.array_equal(keep, ref_keep)
    assert np.array_equal(best, ref_best)  # exact: the bound only skips pairs that cannot raise the max
    assert 0 < keep.sum() < len(prompts)  # the vocabulary is small enough that both branches are exercised
    pairs = sum(len(accepted) + keep[:i].sum() for i in range(len(prompts)))
    assert sum(scored) < pairs / 2  # the bound spared most LCS computations


def test_grounding():
    chunk = "The Eiffel Tower was completed in 1889 and stands in Paris."
    copied = "The Eiffel Tower stands in Paris."
    # content words: eiffel, tower, berlin, germany -> 2 of 4 in the chunk
    half = "The Eiffel Tower is in Berlin, Germany."
    answers = [copied, half, "", None, "It is what it is.", "Paris"]
    scores = grounding(answers, [chunk] * 5 + [None])
    assert scores.tolist() == [1.0, 0.5, 0.0, 0.0, 1.0, 0.0]
    assert scores.dtype == np.float64
    assert {"the", "is", "in", "and", "was"} <= STOP_WORDS
    with pytest.raises(ValueError, match="one chunk per answer"):
        grounding(["a"], [])


def test_grounding_ignores_single_digits():
    assert grounding(["1) Paris, 1889"], ["paris in 1889"]).tolist() == [1.0]
    assert grounding(["Step 1"], ["nothing"]).tolist() == [0.0]  # "step" is a content word, "1" is not


def test_distinct_n():
    assert distinct_n(["a b a b"], n=2) == pytest.approx(2 / 3)  # ab, ba, ab
    assert distinct_n(["a b", "b a"], n=2) == 1.0  # "b b" would span two texts: not counted
    assert distinct_n(["a b c"], n=1) == 1.0
    assert distinct_n(["one"], n=2) == 0.0
    assert distinct_n([], n=2) == 0.0
    repeated = distinct_n(["the same answer every time"] * 20)
    varied = distinct_n([f"answer number {i} talks about topic {i * 7}" for i in range(20)])
    assert repeated == pytest.approx(4 / 80)
    assert varied > 0.5 > repeated


def test_dispersion():
    assert dispersion(np.tile([[0.3, -1.2, 2.0]], (5, 1))) == pytest.approx(0.0, abs=1e-12)
    assert dispersion(np.eye(2)) == pytest.approx(1 - 1 / math.sqrt(2))
    assert dispersion(np.eye(4) * 3.0) == pytest.approx(0.5)  # 1 - 1/sqrt(4); scale does not matter
    assert dispersion(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(1.0)
    assert dispersion(np.array([[1.0, 2.0]])) == 0.0
    assert dispersion(np.array([[1.0, 0.0], [0.0, 0.0], [np.nan, 1.0], [0.0, 1.0]])) == pytest.approx(
        1 - 1 / math.sqrt(2))


def test_length_ks():
    rng = np.random.default_rng(3)
    stat, p = length_ks(rng.poisson(50, 400), rng.poisson(50, 400))
    assert stat < 0.1 and p > 0.01
    stat, p = length_ks(np.full(50, 10), np.full(50, 100))
    assert stat == 1.0 and p < 1e-10
    assert all(math.isnan(v) for v in length_ks(np.array([]), np.array([1.0, 2.0])))
    assert all(math.isnan(v) for v in length_ks(np.array([np.nan]), np.array([1.0])))


def test_vocab_js():
    texts = ["the cat sat on the mat", "a dog barked"]
    assert vocab_js(texts, list(reversed(texts))) == pytest.approx(0.0, abs=1e-12)
    assert vocab_js(["alpha beta"], ["gamma delta"]) == pytest.approx(1.0)
    partial = vocab_js(["a b"], ["b c"])  # p = (.5, .5, 0), q = (0, .5, .5): JS = 0.5 bit
    assert partial == pytest.approx(0.5)
    assert math.isnan(vocab_js([], ["x"]))
    assert math.isnan(vocab_js(["x"], ["!!"]))


def test_mmd_rbf_detects_shift():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(100, 16)), rng.normal(size=(100, 16))
    same_mmd, same_p = mmd_rbf(x, y)
    shifted_mmd, shifted_p = mmd_rbf(x, y + 0.5)
    assert same_p > 0.05 and abs(same_mmd) < 0.01
    assert shifted_p < 0.01 and shifted_mmd > 10 * abs(same_mmd)
    assert shifted_p == pytest.approx(1 / 201)  # no permutation beats the observed split
    assert mmd_rbf(x, y + 0.5, seed=5) == mmd_rbf(x, y + 0.5, seed=5)


def test_mmd_rbf_matches_direct_formula():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(5, 3)) + 0.3
    pooled = np.vstack([x, y])
    dist = np.sqrt(((pooled[:, None] - pooled[None]) ** 2).sum(-1))
    sigma = np.median(dist[np.triu_indices(12, 1)])
    k = np.exp(-(dist**2) / (2 * sigma**2))
    kxx, kyy, kxy = k[:7, :7], k[7:, 7:], k[:7, 7:]
    expected = ((kxx.sum() - np.trace(kxx)) / 42 + (kyy.sum() - np.trace(kyy)) / 20 - 2 * kxy.mean())
    assert mmd_rbf(x, y, permutations=10)[0] == pytest.approx(expected, rel=1e-10)


def test_mmd_rbf_subsamples_and_edges():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(300, 4)), rng.normal(size=(250, 4)) + 1.0
    stat, p = mmd_rbf(x, y, permutations=50, max_rows=60, seed=2)
    assert stat > 0 and p == pytest.approx(1 / 51)
    assert mmd_rbf(x, y, permutations=50, max_rows=60, seed=2) == (stat, p)
    assert all(math.isnan(v) for v in mmd_rbf(x[:1], y))
    assert all(math.isnan(v) for v in mmd_rbf(x, np.array([[np.nan] * 4, [1.0] * 4])))
    stat, p = mmd_rbf(np.ones((5, 3)), np.ones((6, 3)))
    assert stat == pytest.approx(0.0) and p == 1.0


def _law(features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 2 * features[:, 0] - features[:, 1] + rng.normal(scale=0.1, size=len(features))


def test_reward_residual_z():
    rng = np.random.default_rng(4)
    real = rng.uniform(0, 1, size=(200, 2))
    gen = rng.uniform(0, 1, size=(50, 2))
    honest = reward_residual_z(real, _law(real, rng), gen, _law(gen, rng))
    assert np.abs(honest).mean() < 1.5 and np.abs(honest).max() < 4
    hacked = reward_residual_z(real, _law(real, rng), gen, _law(gen, rng) + 1.0)
    assert (hacked > 3).all()  # 1.0 above the law is ~10 residual SDs


def test_reward_residual_z_nan_handling():
    rng = np.random.default_rng(5)
    real = rng.uniform(0, 1, size=(100, 3))
    real[:, 2] = np.nan  # a column with no real value is dropped, not imputed
    target = _law(real, rng)
    real[::10, 0] = np.nan  # imputed with the column mean: still fits
    target[::7] = np.nan  # those real rows are left out of the fit
    gen = rng.uniform(0, 1, size=(4, 3))
    gen_target = _law(gen, rng) + np.array([0.0, 1.0, 0.0, np.nan])
    gen[2, 0] = np.nan
    z = reward_residual_z(real, target, gen, gen_target)
    assert np.isfinite(z[:3]).all() and math.isnan(z[3])
    assert abs(z[0]) < 4 and z[1] > 3


def test_reward_residual_z_cannot_tell():
    rng = np.random.default_rng(6)
    real = rng.uniform(0, 1, size=(9, 2))
    gen = rng.uniform(0, 1, size=(3, 2))
    assert np.isnan(reward_residual_z(real, _law(real, rng), gen, _law(gen, rng))).all()  # 9 < min_rows
    real20 = rng.uniform(0, 1, size=(20, 2))
    exact = reward_residual_z(real20, 2 * real20[:, 0] - real20[:, 1], gen, 2 * gen[:, 0] - gen[:, 1] + 1.0)
    assert np.isnan(exact).all()  # no residual spread: a z-score would be noise over rounding error
    flat = reward_residual_z(real20, np.full(20, 0.5), gen, np.full(3, 0.9))
    assert np.isnan(flat).all()
    assert reward_residual_z(real20, _law(real20, rng), gen[:0], np.array([])).shape == (0,)
    with pytest.raises(ValueError, match="shapes disagree"):
        reward_residual_z(real20, _law(real20, rng), gen[:, :1], _law(gen, rng))
