"""Perplexity scorer: a causal LM's per-document perplexity, batched with padding masked out of the loss.

Writes ``scores.perplexity.{perplexity, tokens}``; its quality is the per-domain percentile (fluent = near 1).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict
from pydantic import Field as Setting

from dctp_tasks.batching import BatchLimits
from dctp_tasks.config import AutoSize
from dctp_tasks.quality.base import Field, Rule, Scorer, ScoringContext

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


class PerplexityConfig(BaseModel):
    """Which causal LM scores perplexity, where, and in what batches."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    """Hugging Face causal LM id or local folder; ``None``: SmolLM2-135M-Instruct prepared by ``make install``
    (nothing downloads at run time)."""
    device: str = "auto"
    """``auto`` (CUDA in bf16 when present, else CPU in fp32), ``cpu`` or ``cuda``."""
    batch_size: AutoSize = "auto"
    """Most documents per forward pass; ``auto``: 16 on a CPU, up to 4,096 on CUDA (the token budget decides)."""
    token_budget: AutoSize = "auto"
    """Most padded tokens per forward pass (documents x the longest; documents are sorted by length first);
    ``auto``: 16 x ``max_tokens`` on a CPU, a share of free GPU memory on CUDA."""
    max_tokens: int = Setting(512, ge=2)
    """Tokens per document, the context token included; longer documents are scored on their first tokens
    (CCNet scores perplexity on a paragraph-sized prefix, Wenzek et al. 2020)."""


CPU_ROWS = 16
"""Documents per forward pass on a CPU when the batch size is ``auto``."""
CPU_LOGIT_BYTES = 256 << 20
"""Memory of the output head on a CPU: it runs over the batch's real tokens in chunks whose logits, their float32
copy and log-softmax fit in this (≈ 450 tokens of SmolLM2's 49k vocabulary, what one 512-token row took before), so a
batch's logits never exist whole (16 x 512 x 49k floats would be 1.6 GB)."""
CUDA_LOGIT_SHARE = 0.1
"""Share of available CUDA memory the chunked output head may take (at most 4 GB)."""


def mean_token_nll(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str | None],
                   limits: BatchLimits | None = None, max_tokens: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Return each text's mean next-token negative log-likelihood (nats, float64) and the number of tokens scored.

    Each text is preceded by the tokenizer's BOS token (EOS when it has none) unless the tokenizer adds it, so the
    first word is scored too. Texts run in token-budget batches of similar lengths (``limits``; ``None``: the
    device's ``auto``), tokenized a chunk ahead in a worker thread; padding is right-aligned, masked from attention
    and left out of the loss, so a text scores the same alone or in any batch. The output head runs only on the
    real tokens, packed, in chunks, in float32. A text with nothing to score (empty) gets NaN and 0 tokens.
    """
    import torch
    import torch.nn.functional as F

    from dctp_tasks.batching import token_batches

    device = next(model.parameters()).device
    limits = limits or lm_limits(model, "auto", "auto", max_tokens)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    cleaned = [t or "" for t in texts]

    def encode(positions: range) -> list[list[int]]:
        encoded = tokenizer(cleaned[positions.start:positions.stop], add_special_tokens=True, truncation=True,
                            max_length=max_tokens - (start is not None), return_attention_mask=False)["input_ids"]
        ids = [list(e) if start is None or (e and e[0] == start) else [start, *e] for e in encoded]
        # a text with nothing to score is left out of the batches (length 0) and keeps NaN
        return [e[:max_tokens] if len(e) > 1 else [] for e in ids]

    nll = np.full(len(texts), np.nan)
    counts = np.zeros(len(texts), dtype=np.int32)
    # any id works as padding: padded positions are masked from attention and never enter the loss
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    head = _float32_head(model)
    chunk = _head_chunk(model, device)
    with torch.inference_mode():
        for batch in token_batches(len(cleaned), encode, limits, pad):
            scored = batch.lengths > 1
            if not scored.any():
                continue
            features = batch.tensors(device)
            input_ids, mask = features["input_ids"], features["attention_mask"]
            # position t predicts token t + 1: keep the positions whose next token is real
            targets_at = mask[:, 1:].bool()
            targets = input_ids[:, 1:][targets_at]
            if decoder is not None and head is not None:
                hidden = decoder(input_ids=input_ids, attention_mask=mask).last_hidden_state[:, :-1][targets_at]
                losses = torch.cat([F.cross_entropy(head(hidden[lo:lo + chunk]), targets[lo:lo + chunk],
                                                    reduction="none") for lo in range(0, len(targets), chunk)])
            else:  # no separable decoder and head: the whole model's logits (memory: batch x tokens x vocabulary)
                logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1][targets_at]
                losses = F.cross_entropy(logits.float(), targets, reduction="none")
            row_of = torch.arange(len(batch.rows), device=device).repeat_interleave(targets_at.sum(dim=1))
            sums = torch.zeros(len(batch.rows), dtype=torch.float64, device=device)
            sums.index_add_(0, row_of, losses.double())
            n = batch.lengths - 1
            rows = batch.rows[scored]
            nll[rows] = sums.cpu().numpy()[scored] / n[scored]
            counts[rows] = n[scored]
    return nll, counts


def lm_limits(model: PreTrainedModel, batch_size: int | str, token_budget: int | str,
              max_tokens: int) -> BatchLimits:
    """Return the batch limits of a causal LM on its device (``auto``: see ``PerplexityConfig``)."""
    from dctp_tasks.batching import activation_bytes, resolve_limits

    param = next(model.parameters())
    return resolve_limits(batch_size, token_budget, str(param.device), cpu_rows=CPU_ROWS, max_length=max_tokens,
                          bytes_per_token=activation_bytes(model.config, max_tokens, param.element_size()))


def _head_chunk(model: PreTrainedModel, device: torch.device) -> int:
    """Return how many tokens' logits the output head computes at once on ``device``."""
    from dctp_tasks.batching import available_cuda_memory

    # per token: the logits in the model's dtype, their float32 copy and the float32 log-softmax
    per_token = int(model.config.vocab_size) * (next(model.parameters()).element_size() + 8)
    budget = CPU_LOGIT_BYTES
    if device.type == "cuda":
        budget = int(min(4 << 30, available_cuda_memory(device) * CUDA_LOGIT_SHARE))
    return max(1, budget // per_token)


def _float32_head(model: PreTrainedModel):
    """Return the output head as a function giving float32 logits (soft-capped as the model does), or ``None``.

    A half-precision model's head runs in float32 (its weight converted once): bf16 logits are too coarse for a
    perplexity (a step of 0.125 at 16-32). Gemma-style ``final_logit_softcapping`` is applied as the model applies it.
    """
    import torch
    import torch.nn.functional as F

    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        return None
    weight = head.weight if head.weight.dtype == torch.float32 else head.weight.float()
    bias = None if head.bias is None else head.bias.float()
    cap = getattr(model.config, "final_logit_softcapping", None)

    def logits(hidden: torch.Tensor) -> torch.Tensor:
        out = F.linear(hidden.float(), weight, bias)
        return torch.tanh(out / cap) * cap if cap else out

    return logits


def percentile_quality(values: np.ndarray, domains: np.ndarray) -> np.ndarray:
    """Return 1 - the mid-rank percentile of each value within its domain: the lowest value gets 1 - 0.5/n.

    Mid-ranks ((rank - 0.5) / n, ties averaged) keep the score inside (0, 1), give equal values equal scores and a
    domain's only document 0.5 (nothing to compare it with). NaN stays NaN and is not ranked.
    """
    values = np.asarray(values, dtype=np.float64)
    out = np.full(len(values), np.nan)
    # a missing domain is a group of its own
    codes = pa.array(np.asarray(domains, dtype=object), pa.string()).dictionary_encode(null_encoding="encode")
    keys = codes.indices.to_numpy(zero_copy_only=False)
    for key in np.unique(keys):
        where = np.flatnonzero((keys == key) & np.isfinite(values))
        if len(where) == 0:
            continue
        group = values[where]
        order = np.argsort(group, kind="stable")
        _, first, ties = np.unique(group[order], return_index=True, return_counts=True)
        ranks = np.empty(len(group))
        ranks[order] = np.repeat(first + (ties + 1) / 2, ties)
        out[where] = 1.0 - (ranks - 0.5) / len(group)
    return out


class PerplexityScorer(Scorer):
    """Score fluency as the perplexity of a causal LM; a GPU task."""

    name = "perplexity"
    gpu = True

    def __init__(self, config: PerplexityConfig | None = None) -> None:
        self.config = config or PerplexityConfig()
        self.fields = [
            Field("perplexity", pa.float32(), "exp(mean next-token negative log-likelihood in nats) under the "
                                              "configured LM over the document's first max_tokens; NaN: empty"),
            Field("tokens", pa.int32(), "tokens scored (the LM's tokens, after truncation to max_tokens)"),
        ]
        self.rules = [
            Rule("perplexity_too_high", "perplexity", ">", None,
                 "perplexity above the threshold; off by default: raw perplexity depends on the model, its "
                 "tokenizer and the domain, so set it per domain from the score report (CCNet buckets by "
                 "per-language percentiles rather than a fixed value, Wenzek et al. 2020)"),
        ]
        self._lm: tuple[PreTrainedModel, PreTrainedTokenizerBase] | None = None

    def prepare(self, context: ScoringContext | None = None) -> None:
        """Load the LM (once per process) before the first batch."""
        from dctp_tasks.quality.lm import causal_lm

        self._lm = causal_lm(self.config.model, self.config.device)

    def score(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        if self._lm is None:
            self.prepare()
        model, tokenizer = self._lm
        limits = lm_limits(model, self.config.batch_size, self.config.token_budget, self.config.max_tokens)
        nll, tokens = mean_token_nll(model, tokenizer, batch.column("text").to_pylist(), limits,
                                     self.config.max_tokens)
        with np.errstate(over="ignore"):
            perplexity = np.exp(nll).astype(np.float32)
        return {"perplexity": perplexity, "tokens": tokens}

    def quality(self, scores: dict[str, np.ndarray], domains: np.ndarray) -> np.ndarray:
        """Return 1 - the percentile of the document's perplexity within its domain's day (most fluent ≈ 1).

        Percentiles rather than a fixed scale: perplexity levels differ by model and domain (code, legal and chat
        text are not equally predictable), and a rank within the domain is comparable across both.
        """
        return percentile_quality(scores["perplexity"], domains)

