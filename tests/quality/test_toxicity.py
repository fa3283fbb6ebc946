"""Toxicity scorer: the shipped MiniLM classifier scores offline and separates Jigsaw's toxic comments from clean
text; Detoxify loads a tiny checkpoint in its own format (built here, offline) and its scores land in the right
fields; ``auto`` picks the backend; the cache token follows the model."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pyarrow.csv as pacsv
import pytest

# Set before transformers is imported by these tests: any attempt to reach the Hub fails instead of downloading.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pydantic import ValidationError

from dctp_tasks.quality import embeddings
from dctp_tasks.quality.base import ScoringContext
from dctp_tasks.quality.toxicity import (
    ORIGINAL_CATEGORIES,
    SHIPPED_CLASSIFIER,
    TOXIC_THRESHOLD,
    ToxicityConfig,
    ToxicityScorer,
    dctp_home,
)
from dctp_tasks.storage import Storage
from tests.conftest import REPO, make_table
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


@pytest.mark.parametrize(("batch_size", "token_budget"), [(4, "auto"), ("auto", 24)])
def test_batched_equals_one_at_a_time_and_detoxify_predict(checkpoints, batch_size, token_budget):
    from detoxify import Detoxify

    batched = ToxicityScorer(ToxicityConfig(checkpoint=checkpoints["random"], device="cpu", batch_size=batch_size,
                                            token_budget=token_budget))
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


# ---- the shipped classifier (the default backend) -------------------------------------------------------------

SHIPPED = REPO / SHIPPED_CLASSIFIER
#: Plainly abusive comments: every one must score above the shipped threshold.
CLEARLY_TOXIC = [
    "You are a stupid idiot and everyone hates you.",
    "Shut up, you worthless piece of garbage.",
    "Go to hell, you pathetic loser. Nobody wants you here.",
    "I will kill you and your family, you disgusting pig.",
    "What a stupid article, the author is a moron.",
    "You're a fucking idiot.",
]
CLEAN = ["Rivers carry water from the mountains to the sea through valleys and plains.",
         "Thank you for the helpful review of my edit; I fixed the citation you pointed out.",
         "The central bank kept interest rates unchanged on Tuesday, citing stable inflation."]


@pytest.fixture(scope="module", autouse=True)
def this_checkout():
    """Resolve the shipped model in this checkout, whatever ``DCTP_HOME`` the environment sets."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("DCTP_HOME", raising=False)
        yield


@pytest.fixture(scope="module")
def shipped_meta() -> dict:
    return json.loads((SHIPPED / "model.json").read_text())


@pytest.fixture(scope="module")
def shipped() -> ToxicityScorer:
    scorer = ToxicityScorer()
    scorer.prepare()
    return scorer


def test_default_is_the_shipped_classifier_with_its_measured_threshold(shipped_meta):
    assert dctp_home() == REPO, "without DCTP_HOME the shipped model is found in this checkout"
    config = ToxicityConfig()
    assert (config.resolved_backend, config.categories, config.classifier_dir()) == ("classifier", ["toxicity"],
                                                                                     SHIPPED)
    scorer = ToxicityScorer(config)
    threshold = shipped_meta["threshold"]["value"]
    assert [f.name for f in scorer.fields] == ["toxicity"] and scorer.gpu
    assert [(r.name, r.field, r.op, r.threshold) for r in scorer.rules] == [("toxic", "toxicity", ">", threshold)]
    # What model.json claims for that threshold is what the README and the rule's doc repeat.
    assert 0.5 < threshold < 1 and shipped_meta["threshold"]["clean_fpr"] <= 0.002
    assert shipped_meta["threshold"]["hold_out_clearly_toxic_tpr"] > 0.5
    assert str(threshold) in scorer.rules[0].doc and "classifier" in scorer.fields[0].doc


def test_shipped_model_is_small_pickle_free_and_documents_its_provenance(shipped_meta):
    assert sorted(p.name for p in SHIPPED.iterdir()) == ["coef.json", "model.json"]
    assert sum(p.stat().st_size for p in SHIPPED.iterdir()) < 32_000
    assert shipped_meta["data"]["file"] == "train.5k.csv" and len(shipped_meta["data"]["sha256"]) == 64
    assert "predibase/llm_distillation_playbook" in shipped_meta["data"]["source"]
    assert (shipped_meta["label_column"], shipped_meta["rows"], shipped_meta["positives"]) == ("toxic", 5000, 478)
    assert shipped_meta["embedding_model"] == "all-MiniLM-L6-v2" and shipped_meta["dim"] == 384
    assert shipped_meta["metrics"]["roc_auc"] >= 0.90 and shipped_meta["metrics"]["average_precision"] > 0.5
    assert {"seed", "c", "sklearn_version", "test_size"} <= set(shipped_meta)


def test_shipped_classifier_scores_offline(shipped):
    texts = [*CLEARLY_TOXIC, *CLEAN, "", None]
    scores = shipped.score(_batch(texts))["toxicity"]
    threshold = shipped.rules[0].threshold

    assert scores.dtype == np.float32 and len(scores) == len(texts)
    toxic, clean = scores[:len(CLEARLY_TOXIC)], scores[len(CLEARLY_TOXIC):-2]
    assert (toxic > threshold).all(), dict(zip(CLEARLY_TOXIC, toxic.round(3)))
    assert (clean < 0.2).all(), dict(zip(CLEAN, clean.round(3)))
    assert np.isnan(scores[-2:]).all(), "empty and missing texts are unscored"
    assert shipped.rules[0].fails(scores).tolist() == [True] * len(CLEARLY_TOXIC) + [False] * (len(CLEAN) + 2)
    np.testing.assert_allclose(shipped.quality({"toxicity": scores}, np.array([None] * len(texts))), 1 - scores)
    assert shipped.to_struct({"toxicity": scores}).type == shipped.struct_type()


def test_classifier_reuses_the_days_stored_embeddings(tmp_path, monkeypatch, shipped):
    from tests.quality.test_embeddings import DT, write_state

    texts = [CLEARLY_TOXIC[0], CLEAN[0], CLEAN[1]]
    ids = [f"t/{i}" for i in range(len(texts))]
    storage = Storage(str(tmp_path))
    write_state(storage, ids, embeddings.encode(texts, ToxicityConfig().embedding))
    expected = shipped.score(_batch(texts))["toxicity"]

    def no_model(*_args, **_kwargs):
        raise AssertionError("encoded a text whose vector is stored")

    monkeypatch.setattr(embeddings, "embed_texts", no_model)
    context = ScoringContext(storage, DT)
    scorer = ToxicityScorer()
    scorer.prepare(context)
    got = scorer.score(make_table(texts, doc_id=ids).to_batches()[0])["toxicity"]
    # stored vectors are float16: the probabilities agree to that precision
    np.testing.assert_allclose(got, expected, atol=2e-3)
    assert context.extra["embeddings"][ToxicityConfig().embedding.key()].stats == {"reused": 3, "encoded": 0}


def _jigsaw(shared_data):
    path = shared_data / "jigsaw_toxic" / "train.5k.csv"
    table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True))
    return path, table.column("comment_text").to_pylist(), np.asarray(table.column("toxic").to_pylist())


def test_shipped_classifier_reaches_auc_090_on_its_jigsaw_hold_out(shared_data, shipped, shipped_meta):
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    path, texts, y = _jigsaw(shared_data)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == shipped_meta["data"]["sha256"], "the shipped model was trained on this file"
    # The training script's own split: these rows were never fitted on.
    _, test = train_test_split(np.arange(len(y)), test_size=shipped_meta["test_size"],
                               random_state=shipped_meta["seed"], stratify=y)
    assert (len(test), int(y[test].sum())) == (shipped_meta["test_rows"], shipped_meta["test_positives"])
    scores = shipped.score(make_table([texts[i] for i in test], doc_id=[f"j/{i}" for i in test]).to_batches()[0])
    p = scores["toxicity"]
    auc = roc_auc_score(y[test], p)
    print(f"shipped toxicity classifier on {len(test)} held-out Jigsaw rows: ROC-AUC {auc:.4f}")
    assert auc >= 0.90
    assert auc == pytest.approx(shipped_meta["metrics"]["roc_auc"], abs=0.005)
    threshold = shipped.rules[0].threshold
    caught = float((p[y[test] == 1] > threshold).mean())
    assert caught == pytest.approx(shipped_meta["threshold"]["hold_out_tpr"], abs=0.03)


def test_clean_boolq_passages_almost_never_cross_the_threshold(shared_data, shipped):
    table = pacsv.read_csv(shared_data / "boolq_wikipedia" / "boolq_validation.csv",
                           parse_options=pacsv.ParseOptions(newlines_in_values=True))
    passages = sorted(set(table.column("passage").to_pylist()))[:400]
    p = shipped.score(_batch(passages))["toxicity"]
    flagged = [(round(float(v), 3), t[:80]) for v, t in zip(p, passages) if v > shipped.rules[0].threshold]
    print(f"{len(flagged)} of {len(passages)} BoolQ passages above the threshold: {flagged}")
    assert len(flagged) <= 0.01 * len(passages), flagged
    assert np.median(p) < 0.2


# ---- choosing the backend, its categories, and the cache token --------------------------------------------------

def test_auto_picks_detoxify_with_a_checkpoint_and_the_classifier_without(checkpoints):
    detox = ToxicityScorer(ToxicityConfig(checkpoint=checkpoints["random"], device="cpu"))
    assert detox.backend == "detoxify" and [f.name for f in detox.fields] == ORIGINAL_CATEGORIES
    assert {r.name: r.threshold for r in detox.rules}["toxic"] == TOXIC_THRESHOLD == 0.8
    detox.prepare()
    assert detox._model is not None and detox._classifier is None
    assert not np.isnan(detox.score(_batch(["rivers carry water"]))["toxicity"]).any()

    classifier = ToxicityScorer(ToxicityConfig())
    assert classifier.backend == "classifier" and [f.name for f in classifier.fields] == ["toxicity"]
    # Named explicitly, Detoxify needs no checkpoint to be chosen (it would download the released one on prepare).
    assert ToxicityConfig(backend="detoxify").resolved_backend == "detoxify"
    assert ToxicityConfig(backend="detoxify").categories == ORIGINAL_CATEGORIES


def test_classifier_backend_refuses_categories_it_cannot_predict():
    with pytest.raises(ValidationError, match=r"\['insult'\] cannot be predicted by the classifier backend.*"
                                              r"only \['toxicity'\]"):
        ToxicityConfig(categories=["toxicity", "insult"])
    with pytest.raises(ValidationError, match="Detoxify checkpoint, but backend is 'classifier'"):
        ToxicityConfig(backend="classifier", checkpoint="/models/detoxify.ckpt")


def copy_shipped(folder):
    shutil.copytree(SHIPPED, folder)
    return folder


def test_cache_token_changes_when_the_model_changes(tmp_path):
    context = ScoringContext(Storage(str(tmp_path / "root")), "2026-01-01")
    folder = copy_shipped(tmp_path / "toxicity-copy")
    shipped_token = ToxicityScorer().cache_token(context)
    scorer = ToxicityScorer(ToxicityConfig(classifier=str(folder)))
    assert scorer.cache_token(context) == shipped_token, "same files, same token, wherever they live"

    meta = json.loads((folder / "model.json").read_text())
    meta["threshold"]["value"] = 0.9
    (folder / "model.json").write_text(json.dumps(meta))
    retrained = ToxicityScorer(ToxicityConfig(classifier=str(folder)))
    retrained_token = retrained.cache_token(context)
    assert retrained_token != shipped_token
    assert retrained.rules[0].threshold == 0.9, "the rule's default follows the model's measured threshold"

    coef = json.loads((folder / "coef.json").read_text())
    (folder / "coef.json").write_text(json.dumps([0.0] * len(coef)))
    assert scorer.cache_token(context) not in {shipped_token, retrained_token}, "new coefficients, new token"


def test_detoxify_cache_token_follows_the_checkpoint_file(tmp_path, checkpoints):
    context = ScoringContext(Storage(str(tmp_path)), "2026-01-01")
    path = tmp_path / "model.ckpt"
    shutil.copy(checkpoints["random"], path)
    scorer = ToxicityScorer(ToxicityConfig(checkpoint=str(path)))
    before = scorer.cache_token(context)
    path.write_bytes(path.read_bytes() + b"retrained")
    assert scorer.cache_token(context) != before
    assert ToxicityScorer(ToxicityConfig(backend="detoxify")).cache_token(context) == ""


def test_a_classifier_folder_relative_to_dctp_home(tmp_path, monkeypatch):
    copy_shipped(tmp_path / "models" / "mine")
    monkeypatch.setenv("DCTP_HOME", str(tmp_path))
    assert ToxicityConfig(classifier="models/mine").classifier_dir() == tmp_path / "models" / "mine"
    assert ToxicityScorer(ToxicityConfig(classifier="models/mine")).rules[0].threshold > 0.5
    with pytest.raises(FileNotFoundError, match="no classifier at .*train_toxicity.py"):
        ToxicityScorer(ToxicityConfig(classifier="models/missing"))


def test_a_classifier_trained_on_other_embeddings_is_refused(tmp_path):
    folder = copy_shipped(tmp_path / "other")
    meta = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**meta, "embedding_model": "another-encoder"}))
    with pytest.raises(ValueError, match="trained on another-encoder embeddings; this scorer embeds with "
                                         "all-MiniLM-L6-v2"):
        ToxicityScorer(ToxicityConfig(classifier=str(folder))).prepare()
