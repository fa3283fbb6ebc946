"""Token-budget batches: every text exactly once, within the limits, padded right; ``auto`` sizes by device."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from dctp_tasks import batching
from dctp_tasks.batching import (
    BatchLimits,
    activation_bytes,
    feature_batches,
    pad_right,
    plan_batches,
    resolve_limits,
    token_batches,
)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("limits", [BatchLimits(rows=8, tokens=64), BatchLimits(rows=1_000, tokens=300),
                                    BatchLimits(rows=3, tokens=10_000)])
def test_plan_covers_every_position_once_within_the_limits(seed, limits):
    lengths = np.random.default_rng(seed).integers(0, 120, size=500)
    batches = plan_batches(lengths, limits)

    covered = np.concatenate(batches)
    assert sorted(covered.tolist()) == list(range(500)), "every position exactly once"
    for batch in batches:
        assert 1 <= len(batch) <= limits.rows
        longest = lengths[batch].max()
        assert len(batch) == 1 or len(batch) * longest <= limits.tokens, "padded tokens within the budget"
    widths = [lengths[b].max() for b in batches]
    assert widths == sorted(widths, reverse=True), "longest first"
    assert [b.tolist() for b in plan_batches(lengths, limits)] == [b.tolist() for b in batches], "deterministic"


def test_a_text_longer_than_the_budget_goes_alone_and_ties_keep_input_order():
    batches = plan_batches(np.array([5, 500, 5, 5, 0]), BatchLimits(rows=10, tokens=12))
    assert [b.tolist() for b in batches] == [[1], [0, 2], [3, 4]]
    assert plan_batches(np.array([], dtype=np.int64), BatchLimits(rows=1, tokens=1)) == []


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="must be positive"):
        BatchLimits(rows=0, tokens=10)


def test_pad_right_rebuilds_each_id_list():
    features = pad_right([[5, 6, 7], [8], []], pad_id=0)
    assert features["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert features["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]


def test_token_batches_cover_every_text_across_chunks_tokenized_off_the_main_thread():
    rng = np.random.default_rng(0)
    ids = [list(rng.integers(1, 50, size=n)) for n in rng.integers(0, 40, size=103)]
    threads = set()

    def encode(positions):
        threads.add(threading.current_thread().name)
        return [ids[i] for i in positions]

    seen = []
    for batch in token_batches(len(ids), encode, BatchLimits(rows=7, tokens=60), pad_id=-1, chunk_rows=10):
        assert batch.features["input_ids"].shape[0] == len(batch.rows) <= 7
        for row, i in enumerate(batch.rows.tolist()):
            n = len(ids[i])
            assert batch.features["input_ids"][row, :n].tolist() == ids[i]
            assert (batch.features["input_ids"][row, n:] == -1).all()
            assert batch.lengths[row] == n
        seen.extend(batch.rows.tolist())
        assert all(0 <= i < len(ids) for i in batch.rows)
    assert sorted(seen) == list(range(len(ids)))
    assert threads and all(name.startswith("dctp-tokenize") for name in threads)


def test_a_tokenizer_error_reaches_the_caller():
    def encode(positions):
        if positions.start >= 20:
            raise RuntimeError("tokenizer broke")
        return [[1]] * len(positions)

    with pytest.raises(RuntimeError, match="tokenizer broke"):
        list(token_batches(50, encode, BatchLimits(rows=4, tokens=40), pad_id=0, chunk_rows=10))
    with pytest.raises(ValueError, match="returned 1 rows for 10 texts"):
        list(token_batches(10, lambda positions: [[1]], BatchLimits(rows=4, tokens=40), pad_id=0))


def test_feature_batches_cut_a_chunks_padding_to_each_batch_and_pass_other_features_through():
    lengths = [3, 1, 4, 2, 0]

    def preprocess(positions):
        width = max(lengths[i] for i in positions)
        mask = np.array([[1] * lengths[i] + [0] * (width - lengths[i]) for i in positions])
        return {"input_ids": mask * (np.arange(len(positions))[:, None] + positions.start + 10),
                "attention_mask": mask, "modality": "text"}

    batches = list(feature_batches(len(lengths), preprocess, BatchLimits(rows=2, tokens=100), chunk_rows=3))
    assert sorted(i for b in batches for i in b.rows.tolist()) == [0, 1, 2, 3, 4]
    for batch in batches:
        assert batch.features["modality"] == "text"
        assert batch.features["attention_mask"].shape[1] == max(lengths[i] for i in batch.rows)
        assert batch.features["attention_mask"].sum(axis=1).tolist() == [lengths[i] for i in batch.rows]
        assert (batch.features["input_ids"][:, 0] == batch.rows + 10)[batch.lengths > 0].all()

    left = lambda positions: {"attention_mask": np.array([[0, 1], [1, 1]])}  # noqa: E731
    with pytest.raises(ValueError, match="right padding"):
        list(feature_batches(2, left, BatchLimits(rows=2, tokens=100)))


def test_auto_limits_on_a_cpu_are_the_cpu_sizes_and_explicit_values_win():
    assert resolve_limits("auto", "auto", "cpu", cpu_rows=16, max_length=512, bytes_per_token=1) == \
        BatchLimits(rows=16, tokens=16 * 512)
    assert resolve_limits(5, 999, "cpu", cpu_rows=16, max_length=512, bytes_per_token=1) == \
        BatchLimits(rows=5, tokens=999)


def test_auto_limits_on_cuda_follow_free_memory(monkeypatch):
    """The sizing arithmetic on a CUDA device, with the free memory a GPU would report (none is here)."""
    import torch

    free = {"bytes": 8 << 30}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 80 << 30))
    per_token = 10_000
    limits = resolve_limits("auto", "auto", "cuda:0", cpu_rows=16, max_length=512, bytes_per_token=per_token)
    assert limits == BatchLimits(rows=batching.CUDA_MAX_ROWS, tokens=int((8 << 30) * 0.25 // per_token))
    free["bytes"] = 140 << 30
    assert resolve_limits("auto", "auto", "cuda", cpu_rows=16, max_length=512,
                          bytes_per_token=per_token).tokens == batching.CUDA_MAX_TOKENS
    free["bytes"] = 1 << 20
    assert resolve_limits("auto", 4096, "cuda", cpu_rows=16, max_length=512,
                          bytes_per_token=per_token) == BatchLimits(rows=batching.CUDA_MAX_ROWS, tokens=4096)
    assert resolve_limits("auto", "auto", "cuda", cpu_rows=16, max_length=512,
                          bytes_per_token=per_token).tokens == 512, "at least one full-length text"


def test_activation_estimate_reads_the_models_config():
    class MiniLM:
        hidden_size, intermediate_size, num_attention_heads = 384, 1536, 12

    assert activation_bytes(MiniLM(), 256, 2) == 2 * 2 * (6 * 384 + 2 * 1536 + 12 * 256)
    assert activation_bytes(None, 128, 4) == 2 * 4 * (6 * 768 + 2 * 3072 + 12 * 128), "BERT-base when unknown"
