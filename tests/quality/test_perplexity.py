"""Perplexity scorer: batched equals one-at-a-time on a tiny random LM; the real SmolLM2 prefers fluent text."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import random
import time

import numpy as np
import pytest

# Set before transformers is imported by these tests: any attempt to reach the Hub fails instead of downloading.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from dctp_tasks.quality import lm
from dctp_tasks.quality.perplexity import PerplexityConfig, PerplexityScorer, percentile_quality
from tests.conftest import IN_CI, REPO, make_table
from tests.quality.tiny_models import build_tiny_causal_lm

TEXTS = [
    "Rivers carry water from the mountains to the sea through valleys and plains. " * 12,
    "The quick brown fox.",
    "",
    "Data curation turns raw text into training data a person can trust. " * 3,
    "a",
    "Numbers like 42 and 2026 appear in many documents, as do dates. " * 40,
    None,
]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> str:
    return str(build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm")))


def _batch(texts, **columns):
    return make_table(texts, **columns).combine_chunks().to_batches()[0]


@pytest.mark.parametrize(("batch_size", "token_budget", "head_bytes"),
                         [(3, "auto", None), ("auto", 40, None), (2, 300, 20_000), ("auto", "auto", 5_000)])
def test_batched_equals_one_at_a_time(tiny_lm, batch_size, token_budget, head_bytes, monkeypatch):
    """Any batch size, token budget or output-head chunk (down to ~1 token of logits) gives each text its own score."""
    from dctp_tasks.quality import perplexity

    if head_bytes:
        monkeypatch.setattr(perplexity, "CPU_LOGIT_BYTES", head_bytes)
    batched = PerplexityScorer(PerplexityConfig(model=tiny_lm, device="cpu", batch_size=batch_size,
                                                token_budget=token_budget, max_tokens=256))
    single = PerplexityScorer(PerplexityConfig(model=tiny_lm, device="cpu", batch_size=1, max_tokens=256))
    together = batched.score(_batch(TEXTS))
    alone = [single.score(_batch([t])) for t in TEXTS]

    assert together["perplexity"].dtype == np.float32 and together["tokens"].dtype == np.int32
    for i, one in enumerate(alone):
        assert together["tokens"][i] == one["tokens"][0]
        if TEXTS[i]:
            assert together["perplexity"][i] == pytest.approx(one["perplexity"][0], rel=1e-4), i
    tokens = together["tokens"].tolist()
    assert tokens[2] == tokens[6] == 0 and np.isnan(together["perplexity"][[2, 6]]).all()
    assert tokens[5] == 255, "a long text is truncated to max_tokens (the BOS context token included)"
    assert tokens[0] > 10 * tokens[1], "lengths differ enough that padding matters"
    assert batched.struct_type().names == ["perplexity", "tokens"]
    assert len(batched.to_struct(together)) == len(TEXTS)


def test_perplexity_matches_the_models_own_loss(tiny_lm):
    """The masked, shifted NLL equals transformers' built-in causal-LM loss on an unpadded sequence."""
    import torch

    model, tokenizer = lm.causal_lm(tiny_lm, "cpu")
    text = TEXTS[3]
    ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(text)["input_ids"]]])
    with torch.inference_mode():
        expected = math.exp(float(model(input_ids=ids, labels=ids).loss))
    scorer = PerplexityScorer(PerplexityConfig(model=tiny_lm, device="cpu", batch_size=4))
    got = scorer.score(_batch([TEXTS[0], text]))
    assert got["perplexity"][1] == pytest.approx(expected, rel=1e-4)
    assert got["tokens"][1] == ids.shape[1] - 1


def test_a_soft_capped_lm_scores_its_own_loss(tiny_lm, tmp_path):
    """Gemma-style final-logit soft-capping is applied in the packed head, as the model's own loss applies it."""
    import torch
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

    from dctp_tasks.quality.perplexity import mean_token_nll

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    config = Gemma2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                          final_logit_softcapping=3.0, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(config).eval()
    for layer in model.modules():  # large weights, so the cap at 3.0 bites
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.normal_(layer.weight, std=0.5)
    texts = [TEXTS[3], TEXTS[1]]
    nll, counts = mean_token_nll(model, tokenizer, texts)
    for i, text in enumerate(texts):
        ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(text)["input_ids"]]])
        with torch.inference_mode():
            output = model(input_ids=ids, labels=ids)
        assert output.logits.abs().max() <= 3.0
        assert nll[i] == pytest.approx(float(output.loss), rel=1e-4) and counts[i] == ids.shape[1] - 1


def test_quality_is_one_minus_the_percentile_within_each_domain():
    perplexity = np.array([10.0, 30.0, 20.0, 5.0, np.nan, 7.0, 7.0, 1000.0], dtype=np.float32)
    domains = np.array(["a", "a", "a", "b", "a", None, None, "b"], dtype=object)
    got = PerplexityScorer().quality({"perplexity": perplexity, "tokens": np.ones(8, np.int32)}, domains)
    np.testing.assert_allclose(got[[0, 2, 1]], [1 - 0.5 / 3, 0.5, 0.5 / 3])
    np.testing.assert_allclose(got[[3, 7]], [0.75, 0.25], err_msg="ranked within domain b only")
    np.testing.assert_allclose(got[[5, 6]], [0.5, 0.5], err_msg="ties share a percentile; None is a domain")
    assert np.isnan(got[4])
    assert np.isnan(percentile_quality(np.array([np.nan]), np.array(["a"], dtype=object))).all()


def test_rule_is_off_by_default_and_thresholds_perplexity():
    (rule,) = PerplexityScorer().rules
    values = np.array([50.0, 500.0, np.nan])
    assert rule.name == "perplexity_too_high" and rule.threshold is None
    assert not rule.fails(values).any()
    assert rule.fails(values, 100.0).tolist() == [False, True, False]


def test_missing_default_model_says_how_to_prepare_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DCTP_MODEL_CACHE", str(tmp_path))
    (tmp_path / lm.SMOLLM2_FOLDER).mkdir()  # an interrupted preparation: no ready marker
    with pytest.raises(FileNotFoundError, match=r"make install.*prepare_models\.py"):
        lm.default_lm_path()


def _prepare_module():
    spec = importlib.util.spec_from_file_location("prepare_models", REPO / "include" / "prepare_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_skips_a_complete_folder_and_redoes_an_interrupted_one(tmp_path, monkeypatch):
    prepare = _prepare_module()
    calls = []

    def fake_fetch(version, workdir):
        calls.append(version)
        gguf = workdir / "model.gguf"
        gguf.write_bytes(b"gguf")
        return gguf

    def fake_convert(gguf, out):
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(prepare, "fetch_gguf", fake_fetch)
    monkeypatch.setattr(prepare, "convert_gguf", fake_convert)
    dest = tmp_path / "smollm2-135m"
    dest.mkdir()
    (dest / "stale.bin").write_bytes(b"half-written")

    prepare.prepare_smollm2(dest)
    assert calls == [lm.SMOLLM2_PIN] and lm.is_prepared(dest)
    assert sorted(p.name for p in dest.iterdir()) == [lm.READY_MARKER, "model.safetensors"]
    assert not (tmp_path / "smollm2-135m.partial").exists()
    prepare.prepare_smollm2(dest)
    assert calls == [lm.SMOLLM2_PIN], "a complete folder is not prepared again"


def _shuffled(text: str, rng: random.Random) -> str:
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


def test_real_smollm2_scores_fluent_text_below_shuffled_text(shared_data):
    if not lm.is_prepared(lm.smollm2_folder()):
        reason = f"SmolLM2 not prepared at {lm.smollm2_folder()}: run `python include/prepare_models.py`"
        if IN_CI:
            pytest.fail(reason + " (CI=true: make install prepares it)")
        pytest.skip(reason)
    with (shared_data / "boolq_wikipedia" / "boolq_validation.csv").open(newline="") as f:
        passages = [row["passage"] for row, _ in zip(csv.DictReader(f), range(200))]
    rng = random.Random(20260101)
    shuffled = [_shuffled(p, rng) for p in passages]
    # 64 tokens (≈ 50 words) already tell word salad from prose, and keep the test near a minute on 2 CPU cores
    scorer = PerplexityScorer(PerplexityConfig(device="cpu", batch_size=20, max_tokens=64))
    scorer.prepare()
    started = time.monotonic()
    scores = scorer.score(_batch(passages + shuffled))
    elapsed = time.monotonic() - started
    fluent, salad = scores["perplexity"][:200], scores["perplexity"][200:]
    share = float(np.mean(fluent < salad))
    print(f"\nSmolLM2: fluent < shuffled for {share:.1%} of {len(passages)} pairs; median perplexity "
          f"{np.median(fluent):.1f} vs {np.median(salad):.1f}; {2 * len(passages) / elapsed:.1f} docs/s at 64 tokens")
    assert scores["tokens"].max() == 63 and np.median(scores["tokens"]) == 63, "truncated to max_tokens"
    assert share >= 0.95
