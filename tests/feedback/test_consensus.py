"""Expert consensus on hand-built and simulated judgements whose truth is known: method choice, reliability and
flags, weighted votes, Dawid–Skene against plain majority, agreement measures, validation, scale."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from dctp_tasks.config import FeedbackConfig
from dctp_tasks.feedback import consensus as cs
from dctp_tasks.feedback.consensus import (
    BAD,
    DAWID_SKENE,
    GOOD,
    NEEDS_REVIEW,
    WEIGHTED_MAJORITY,
    Judgements,
    cohen_kappa_pairs,
    dawid_skene,
    krippendorff_alpha,
    merge_consensus,
    nominal_alpha,
    simulate,
    weighted_majority,
)


def _judgements(rows: list[tuple[int, int, int]], n_items: int, n_experts: int) -> Judgements:
    item, expert, label = (np.array(c, dtype=np.int64) for c in zip(*rows, strict=True))
    return Judgements(item, expert, label.astype(np.int8), n_items, n_experts)


def _majority_accuracy(j: Judgements, truth: np.ndarray) -> float:
    """Accuracy of the plain unweighted majority, ties broken by a coin (they are as good as a guess)."""
    p = weighted_majority(j, np.ones(j.n_experts))
    coin = np.random.default_rng(0).random(p.size) < 0.5
    guess = np.where(p == 0.5, coin, p > 0.5)
    return float(np.mean(guess == truth))


# --- Judgements ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("item", "expert", "label", "message"),
    [
        ([0, 1], [0], [1, 0], "lengths differ"),
        ([0, 1], [0, 3], [1, 0], "expert out of range"),
        ([0, 2], [0, 1], [1, 0], "item out of range"),
        ([0, 1], [0, 1], [1, 2], "label must be 0"),
        ([0.5, 1], [0, 1], [1, 0], "item must hold integers"),
    ],
)
def test_judgements_validation_names_the_problem(item, expert, label, message):
    with pytest.raises(ValueError, match=message):
        Judgements(np.array(item), np.array(expert), np.array(label), 2, 2)


def test_judgements_normalise_dtypes():
    j = Judgements(np.array([0, 1], dtype=np.int32), np.array([1, 0]), np.array([True, False]), 2, 2)
    assert (j.item.dtype, j.expert.dtype, j.label.dtype) == (np.int64, np.int64, np.int8)


# --- weighted majority -----------------------------------------------------------------------------------------------

def test_weighted_majority_roster_weights_decide_a_split():
    # Item 0: heavy expert 0 good vs expert 1 bad; item 1: an exact tie; item 2: nobody.
    j = _judgements([(0, 0, GOOD), (0, 1, BAD), (1, 1, GOOD), (1, 2, BAD)], 3, 3)
    weights = np.array([2.0, 1.0, 1.0])
    lenient = merge_consensus(j, weights, FeedbackConfig(min_confidence=0.6))
    strict = merge_consensus(j, weights, FeedbackConfig(min_confidence=0.7))

    assert lenient.method == strict.method == WEIGHTED_MAJORITY
    np.testing.assert_allclose(lenient.p_good[:2], [2 / 3, 0.5])
    np.testing.assert_allclose(lenient.confidence[:2], [2 / 3, 0.5])
    assert lenient.label.tolist() == [GOOD, NEEDS_REVIEW, NEEDS_REVIEW]
    assert strict.label.tolist() == [NEEDS_REVIEW, NEEDS_REVIEW, NEEDS_REVIEW]
    assert lenient.n_judgements.tolist() == [2, 2, 0]
    assert np.isnan(lenient.p_good[2])
    assert lenient.shared_items == 2
    assert (lenient.confusion, lenient.class_prior, lenient.iterations) == (None, None, 0)
    assert lenient.judgements.tolist() == [1, 2, 1]
    # Expert 0 agrees with the one decided item; expert 1 judged it and the tie, only the former counts.
    np.testing.assert_allclose(lenient.agreement, [1.0, 0.0, np.nan])


def test_an_exact_tie_is_needs_review_even_at_the_lowest_confidence():
    # 0.1 + 0.2 good against 0.3 bad: an even split of weights that are not exact in binary.
    j = _judgements([(0, 0, GOOD), (0, 1, BAD), (0, 2, GOOD)], 1, 3)
    weights = np.array([0.1, 0.3, 0.2])
    c = merge_consensus(j, weights, FeedbackConfig(min_confidence=0.5))
    assert c.label.tolist() == [NEEDS_REVIEW]


def test_majority_is_used_below_the_dawid_skene_threshold():
    j, _ = simulate(40, [0.9, 0.9, 0.9], 2, 0.5, seed=1)
    assert merge_consensus(j, np.ones(3), FeedbackConfig(dawid_skene_min_items=41)).method == WEIGHTED_MAJORITY
    assert merge_consensus(j, np.ones(3), FeedbackConfig(dawid_skene_min_items=40)).method == DAWID_SKENE


def test_majority_reliability_is_leave_one_out_agreement_and_a_flag_reweighs():
    # Items 0-9: experts 0-2 say good, expert 3 (roster weight 1.5) says bad. Item 10: expert 3 bad vs expert 0 good.
    rows = [(i, e, GOOD) for i in range(10) for e in range(3)] + [(i, 3, BAD) for i in range(10)]
    rows += [(10, 3, BAD), (10, 0, GOOD)]
    j = _judgements(rows, 11, 4)
    weights = np.array([1.0, 1.0, 1.0, 1.5])
    cfg = FeedbackConfig(min_confidence=0.6, min_expert_judgements=5, reliability_floor=0.6, flagged_weight=0.25)
    c = merge_consensus(j, weights, cfg)

    assert c.method == WEIGHTED_MAJORITY
    # Expert 0 disagrees only on item 10, where the others (expert 3) say bad.
    np.testing.assert_allclose(c.reliability, [10 / 11, 1.0, 1.0, 0.0])
    assert c.flagged.tolist() == [False, False, False, True]
    # First pass: 1 good vs 1.5 bad = 0.4 -> bad at confidence 0.6; flagged, expert 3 weighs 0.375 -> good.
    unflagged = merge_consensus(j, weights, cfg.model_copy(update={"reliability_floor": 0.0}))
    assert unflagged.label[10] == BAD
    assert c.label[10] == GOOD
    np.testing.assert_allclose(c.p_good[10], 1 / 1.375)
    np.testing.assert_allclose(c.agreement, [1.0, 1.0, 1.0, 0.0])


def test_reliability_needs_min_expert_judgements():
    rows = [(i, e, GOOD) for i in range(4) for e in range(3)] + [(i, 3, BAD) for i in range(4)]
    c = merge_consensus(_judgements(rows, 4, 4), np.ones(4), FeedbackConfig(min_expert_judgements=5))
    assert np.all(np.isnan(c.reliability))
    assert not c.flagged.any()


# --- Dawid–Skene -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("planted", [0.5, 0.3])
def test_a_planted_unreliable_expert_is_recovered(planted):
    j, truth = simulate(600, [0.9] * 6 + [planted], 3, 0.6, seed=7)
    cfg = FeedbackConfig(reliability_floor=0.6)
    c = merge_consensus(j, np.ones(7), cfg)

    assert c.method == DAWID_SKENE
    assert c.shared_items == 600
    assert int(np.nanargmin(c.reliability)) == 6
    assert c.reliability[6] < 0.6
    assert np.all(c.reliability[:6] > 0.8)
    assert c.flagged.tolist() == [False] * 6 + [True]
    assert c.confusion.shape == (7, 2, 2)
    np.testing.assert_allclose(c.confusion.sum(axis=2), 1.0)
    np.testing.assert_allclose(c.class_prior, [0.4, 0.6], atol=0.05)
    assert 0 < c.iterations <= 100
    decided = c.label != NEEDS_REVIEW
    assert np.mean(c.label[decided] == truth[decided]) > 0.95


MIXED = [0.95, 0.95, 0.65, 0.6, 0.6, 0.55]


def test_dawid_skene_beats_plain_majority():
    j, truth = simulate(2000, MIXED, 3, 0.5, seed=3)
    p, _, _, _ = dawid_skene(j)
    ds = np.mean((p > 0.5) == truth)
    assert ds > _majority_accuracy(j, truth) + 0.03


@pytest.mark.parametrize("seed", range(5))
def test_dawid_skene_is_never_worse_than_plain_majority(seed):
    j, truth = simulate(500, MIXED, 3, 0.3 + 0.1 * seed, seed=seed)
    p, _, _, _ = dawid_skene(j)
    assert np.mean((p > 0.5) == truth) >= _majority_accuracy(j, truth)


def test_dawid_skene_undoes_label_switching():
    # Expert 0 judges every item, is adversarial (right 20%) and weighs 1000: the weighted-majority start follows
    # them and EM settles on the mirrored solution (expert 0 "perfect", the three accurate experts per item worse
    # than chance), whose judgement-weighted accuracy is below 0.5. The guard swaps the classes back.
    crowd, truth = simulate(1000, [0.9] * 4, 3, 0.6, seed=1)
    rng = np.random.default_rng(101)  # not simulate's seed: its stream drew the truth
    adversary = np.where(rng.random(1000) < 0.2, truth, 1 - truth)
    j = Judgements(
        np.concatenate([crowd.item, np.arange(1000)]),
        np.concatenate([crowd.expert + 1, np.zeros(1000, np.int64)]),
        np.concatenate([crowd.label, adversary]),
        1000,
        5,
    )
    p, confusion, prior, _ = dawid_skene(j, np.array([1000.0, 1, 1, 1, 1]))
    assert np.mean((p > 0.5) == truth) > 0.75
    assert np.all(np.diagonal(confusion[0]) < 0.05)
    # Measured against the (80% right) flipped adversary, the accurate experts look about 0.9 * 0.8 + 0.1 * 0.2.
    assert np.all(prior[0] * confusion[1:, 0, 0] + prior[1] * confusion[1:, 1, 1] > 0.7)
    np.testing.assert_allclose(prior, [0.4, 0.6], atol=0.05)


def test_dawid_skene_weight_zero_ignores_an_experts_evidence():
    j, _ = simulate(300, [0.9, 0.8, 0.7, 0.6], 2, 0.5, seed=11)
    p_without, _, _, _ = dawid_skene(Judgements(j.item[j.expert != 3], j.expert[j.expert != 3],
                                                j.label[j.expert != 3], 301, 3))
    # Item 300 is judged by expert 3 alone: with weight 0 it has no evidence.
    j = Judgements(np.append(j.item, 300), np.append(j.expert, 3), np.append(j.label, GOOD), 301, 4)
    p_zero, _, _, _ = dawid_skene(j, np.array([1.0, 1.0, 1.0, 0.0]))
    np.testing.assert_allclose(p_zero, p_without, atol=1e-9)
    assert np.isnan(p_zero[300])


def test_dawid_skene_flag_tempers_the_flagged_expert():
    j, _ = simulate(600, [0.9] * 6 + [0.3], 3, 0.5, seed=2)
    c = merge_consensus(j, np.ones(7), FeedbackConfig())
    p_plain, _, _, _ = dawid_skene(j)
    assert c.flagged[6]
    # The adversarial expert's (inverted) evidence counts a quarter: items they judged get less extreme posteriors.
    theirs = np.unique(j.item[j.expert == 6])
    logit = np.log(c.p_good[theirs] / (1 - c.p_good[theirs]))
    logit_plain = np.log(p_plain[theirs] / (1 - p_plain[theirs]))
    assert np.mean(np.abs(logit)) < np.mean(np.abs(logit_plain))


def test_dawid_skene_rejects_bad_arguments():
    j, _ = simulate(10, [0.9, 0.9], 2, 0.5, seed=0)
    with pytest.raises(ValueError, match="smoothing"):
        dawid_skene(j, smoothing=0.0)
    with pytest.raises(ValueError, match="weights"):
        dawid_skene(j, np.ones(3))


# --- agreement measures ----------------------------------------------------------------------------------------------

KRIPPENDORFF_2011 = {
    "A": "1 2 3 3 2 1 4 1 2 * * *",
    "B": "1 2 3 3 2 2 4 1 2 5 * 3",
    "C": "* 3 3 3 2 3 4 2 2 5 1 *",
    "D": "1 2 3 3 2 4 4 1 2 5 1 *",
}


def test_nominal_alpha_reproduces_krippendorffs_example():
    unit, value = [], []
    for row in KRIPPENDORFF_2011.values():
        for u, v in enumerate(row.split()):
            if v != "*":
                unit.append(u)
                value.append(int(v))
    assert round(nominal_alpha(np.array(unit), np.array(value)), 3) == 0.743


def test_krippendorff_alpha_perfect_random_and_undefined():
    j, _ = simulate(500, [1.0] * 4, 3, 0.5, seed=0)
    assert krippendorff_alpha(j) == pytest.approx(1.0)
    noise, _ = simulate(4000, [0.5] * 4, 3, 0.5, seed=0)
    assert abs(krippendorff_alpha(noise)) < 0.05
    single = _judgements([(0, 0, GOOD), (1, 1, BAD)], 2, 2)
    assert np.isnan(krippendorff_alpha(single))
    constant = _judgements([(0, 0, GOOD), (0, 1, GOOD)], 1, 2)
    assert np.isnan(krippendorff_alpha(constant))


def test_cohen_kappa_pairs_match_sklearn():
    j, _ = simulate(300, [0.9, 0.8, 0.7, 0.6, 0.95], 2, 0.4, seed=4)
    # Expert 5 judges one item alone: no pair; experts 6 and 7 share one item and agree, both constant.
    rows = list(zip(j.item.tolist(), j.expert.tolist(), j.label.tolist(), strict=True))
    rows += [(300, 5, GOOD), (301, 6, GOOD), (301, 7, GOOD)]
    j = _judgements(rows, 302, 8)
    pairs = cohen_kappa_pairs(j)

    assert set(pairs) == {(a, b) for a in range(5) for b in range(a + 1, 5)} | {(6, 7)}
    for (a, b), (kappa, n) in pairs.items():
        la = dict(zip(j.item[j.expert == a].tolist(), j.label[j.expert == a].tolist(), strict=True))
        lb = dict(zip(j.item[j.expert == b].tolist(), j.label[j.expert == b].tolist(), strict=True))
        common = sorted(la.keys() & lb.keys())
        assert n == len(common)
        if (a, b) == (6, 7):
            continue  # sklearn warns on the undefined case; checked below
        expected = cohen_kappa_score([la[i] for i in common], [lb[i] for i in common])
        np.testing.assert_allclose(kappa, expected)
    assert np.isnan(pairs[(6, 7)][0])
    assert set(cohen_kappa_pairs(j, min_overlap=2)) == set(pairs) - {(6, 7)}


# --- simulation and scale --------------------------------------------------------------------------------------------

def test_simulate_draws_distinct_experts_with_their_accuracy():
    j, truth = simulate(20_000, [0.95, 0.6, 0.8], 2, 0.3, seed=9)
    assert j.item.size == 40_000 and truth.shape == (20_000,)
    assert np.all(j.expert[0::2] != j.expert[1::2])
    right = j.label == truth[j.item]
    for e, accuracy in enumerate([0.95, 0.6, 0.8]):
        assert np.mean(right[j.expert == e]) == pytest.approx(accuracy, abs=0.02)
    assert np.mean(truth) == pytest.approx(0.3, abs=0.02)
    with pytest.raises(ValueError, match="per_item"):
        simulate(5, [0.9, 0.9], 3, 0.5, seed=0)


def test_no_judgements_at_all():
    j = Judgements(np.array([], np.int64), np.array([], np.int64), np.array([], np.int8), 3, 2)
    c = merge_consensus(j, np.ones(2), FeedbackConfig())
    assert c.method == WEIGHTED_MAJORITY and c.shared_items == 0
    assert c.label.tolist() == [NEEDS_REVIEW] * 3 and c.n_judgements.tolist() == [0, 0, 0]
    assert np.isnan(c.reliability).all() and np.isnan(c.agreement).all()
    assert cohen_kappa_pairs(j) == {} and np.isnan(krippendorff_alpha(j))


def test_a_million_judgements(capsys):
    experts = [0.9, 0.85, 0.8, 0.95, 0.7, 0.6, 0.9, 0.75, 0.88, 0.45]
    j, truth = simulate(500_000, experts, 2, 0.7, seed=0)
    c = merge_consensus(j, np.ones(len(experts)), FeedbackConfig())

    assert j.item.size == 1_000_000
    assert c.method == DAWID_SKENE and c.shared_items == 500_000
    assert c.label.shape == c.p_good.shape == c.n_judgements.shape == (500_000,)
    assert c.reliability.shape == c.flagged.shape == (10,) and c.confusion.shape == (10, 2, 2)
    assert c.flagged.tolist() == [False] * 9 + [True]
    decided = c.label != NEEDS_REVIEW
    assert decided.mean() > 0.8
    assert np.mean(c.label[decided] == truth[decided]) > 0.9
    assert capsys.readouterr() == ("", "")


def test_an_expert_who_only_sees_good_documents_is_measured_on_them():
    """Under Dawid–Skene, an expert restricted to a domain where every document is good and who is always right is
    measured on the documents they judged (about 0.9: they never say bad, so where the other expert does, they may be
    the one wrong), not on the bad-class row of their matrix, which only the smoothing prior fills (weighted by the
    overall class prior, that gave 0.57: flagged)."""
    rng = np.random.default_rng(4)
    n = 400
    truth = rng.random(n) < 0.5
    truth[:100] = True  # the domain the specialist judges: all good
    items, experts, labels = [], [], []
    for i in range(n):
        judges = [0, 1] if i >= 100 else [0, 2]  # 0 judges everything, 1 the rest, 2 only the good domain
        for e in judges:
            items.append(i)
            experts.append(e)
            labels.append(int(truth[i]) if rng.random() < 0.95 or e == 2 else 1 - int(truth[i]))
    j = cs.Judgements(np.array(items), np.array(experts), np.array(labels), n, 3)
    result = cs.merge_consensus(j, np.ones(3), FeedbackConfig(dawid_skene_min_items=50))
    assert result.method == cs.DAWID_SKENE
    assert result.reliability[2] > 0.85 and not result.flagged.any()
