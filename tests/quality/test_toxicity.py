"""Toxicity scorer: Detoxify loads a tiny checkpoint in its own format (built here, offline) and its scores land
in the right fields."""

from __future__ import annotations

import os

import numpy as np
import pytest

# Set before transformers is imported by these tests: any attempt to reach the Hub fails instead of downloading.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pydantic import ValidationError

from dctp_tasks.quality.toxicity import ORIGINAL_CATEGORIES, ToxicityConfig, ToxicityScorer
from tests.conftest import make_table
from tests.quality.tiny_models import (
    ORIGINAL_CLASSES,
    build_tiny_bert_base,
    build_tiny_detoxify_checkpoint,
)

#: Distinct per-category probabilities: a value in the wrong field cannot pass.
CONSTANT = {"toxicity": 0.91, "severe_toxicity": 0.12, "obscene": 0.23, "threat": 0.34, "insult": 0.45,
            "identity_attack": 0.56, "sexual_explicit": 0.67}
# Stored in another order than the config's categories (and under Detoxify's raw Jigsaw names), as released
# checkpoints differ: the scorer must map by name, not by position.
UNBIASED_ORDER = ["sexual_explicit", *reversed(ORIGINAL_CLASSES)]
TEXTS = ["you are a wonderful person", "", "the quick brown fox jumps over the lazy dog " * 30, None,
         "rivers carry water to the sea", "numbers like 42 appear in many documents, as do dates"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny-detoxify")
    base = build_tiny_bert_base(root / "bert")
    return {
        "constant": str(build_tiny_detoxify_checkpoint(root / "constant.ckpt", base, UNBIASED_ORDER, CONSTANT)),
        "random": str(build_tiny_detoxify_checkpoint(root / "random.ckpt", base, ORIGINAL_CLASSES, seed=1)),
    }


def _batch(texts):
    return make_table(texts).combine_chunks().to_batches()[0]


def test_scores_land_in_their_fields(checkpoints):
    categories = [*ORIGINAL_CATEGORIES, "sexual_explicit"]
    scorer = ToxicityScorer(ToxicityConfig(model_type="unbiased", checkpoint=checkpoints["constant"],
                                           categories=categories, device="cpu"))
    scorer.prepare()
    scores = scorer.score(_batch(TEXTS))

    assert [f.name for f in scorer.fields] == categories
    for name in categories:
        assert scores[name].dtype == np.float32
        values = scores[name][[0, 2, 4, 5]]
        np.testing.assert_allclose(values, CONSTANT[name], rtol=1e-6, err_msg=name)
        assert np.isnan(scores[name][[1, 3]]).all(), "empty and missing texts are unscored"
    rules = {r.name: r for r in scorer.rules}
    assert rules["toxic"].threshold == 0.8 and rules["toxic"].field == "toxicity"
    assert all(r.threshold is None for name, r in rules.items() if name != "toxic")
    assert rules["toxic"].fails(scores["toxicity"]).tolist() == [True, False, True, False, True, True]
    np.testing.assert_allclose(scorer.quality(scores, np.array([None] * len(TEXTS)))[0], 0.09, rtol=1e-5)
    assert scorer.to_struct(scores).type == scorer.struct_type()


def test_batched_equals_one_at_a_time_and_detoxify_predict(checkpoints):
    from detoxify import Detoxify

    batched = ToxicityScorer(ToxicityConfig(checkpoint=checkpoints["random"], device="cpu", batch_size=4))
    single = ToxicityScorer(ToxicityConfig(checkpoint=checkpoints["random"], device="cpu", batch_size=1))
    together = batched.score(_batch(TEXTS))
    alone = [single.score(_batch([t])) for t in TEXTS]
    reference = Detoxify("original", checkpoint=checkpoints["random"]).predict([t for t in TEXTS if t])
    scored = [i for i, t in enumerate(TEXTS) if t]

    for name in ORIGINAL_CATEGORIES:
        np.testing.assert_allclose(together[name], [a[name][0] for a in alone], atol=1e-5, err_msg=name)
        np.testing.assert_allclose(together[name][scored], reference[name], atol=1e-5, err_msg=name)
    assert np.ptp(together["toxicity"][scored]) > 0, "a random model scores texts differently"


def test_a_category_the_model_does_not_predict_is_refused(checkpoints):
    scorer = ToxicityScorer(ToxicityConfig(checkpoint=checkpoints["random"], device="cpu",
                                           categories=[*ORIGINAL_CATEGORIES, "sexual_explicit"]))
    with pytest.raises(ValueError, match=r"does not predict \['sexual_explicit'\]"):
        scorer.prepare()


def test_categories_must_include_toxicity():
    with pytest.raises(ValidationError, match="must include 'toxicity'"):
        ToxicityConfig(categories=["insult"])
