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

from dctp_tasks.quality.base import Field, Rule, Scorer, ScoringContext

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


class PerplexityConfig(BaseModel):
    """Which causal LM scores perplexity, where, and in what batches."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    """Hugging Face causal LM id or local folder; ``None``: SmolLM2-135M-Instruct prepared by ``make install``
    (nothing downloads at run time)."""
    device: str = "auto"
    """``auto`` (CUDA in fp16 when present, else CPU in fp32), ``cpu`` or ``cuda``."""
    batch_size: int = Setting(16, ge=1)
    """Documents per forward pass. Logits take batch_size x max_tokens x vocabulary x 4 bytes on CPU (≈ 1.6 GB at
    the defaults with SmolLM2's 49,152-token vocabulary); raise it on a GPU."""
    max_tokens: int = Setting(512, ge=2)
    """Tokens per document, the context token included; longer documents are scored on their first tokens
    (CCNet scores perplexity on a paragraph-sized prefix, Wenzek et al. 2020)."""


def mean_token_nll(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str | None],
                   batch_size: int = 16, max_tokens: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Return each text's mean next-token negative log-likelihood (nats, float64) and the number of tokens scored.

    Each text is preceded by the tokenizer's BOS token (EOS when it has none) unless the tokenizer adds it, so the
    first word is scored too. Texts are sorted by length so a forward pass pads little; padding is right-aligned,
    masked from attention and left out of the loss, so a text scores the same alone or in any batch. A text with
    nothing to score (empty) gets NaN and 0 tokens.
    """
    import torch
    import torch.nn.functional as F

    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    encoded = tokenizer([t or "" for t in texts], add_special_tokens=True, truncation=True,
                        max_length=max_tokens - (start is not None))["input_ids"]
    ids = [list(e) if start is None or (e and e[0] == start) else [start, *e] for e in encoded]
    ids = [e[:max_tokens] for e in ids]
    nll = np.full(len(ids), np.nan)
    counts = np.array([max(len(e) - 1, 0) for e in ids], dtype=np.int32)
    order = [i for i in np.argsort([-len(e) for e in ids], kind="stable") if counts[i] > 0]
    device = next(model.parameters()).device
    # any id works as padding: padded positions are masked from attention and never enter the loss
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # Logits for a whole batch are batch x tokens x vocabulary (1.6 GB at 16 x 512 x 49k): run the decoder once and
    # the output head one row at a time instead. Models that post-process logits (soft-capping) take the plain path.
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    head = model.get_output_embeddings()
    by_row = decoder is not None and head is not None and not getattr(model.config, "final_logit_softcapping", None)
    with torch.inference_mode():
        for lo in range(0, len(order), batch_size):
            rows = order[lo:lo + batch_size]
            width = len(ids[rows[0]])
            input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                input_ids[r, :len(ids[i])] = torch.tensor(ids[i])
                mask[r, :len(ids[i])] = 1
            if by_row:
                hidden = decoder(input_ids=input_ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            else:
                logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
            for r, i in enumerate(rows):
                n = len(ids[i])
                row_logits = head(hidden[r, :n - 1]) if by_row else logits[r, :n - 1]
                loss = F.cross_entropy(row_logits.float(), input_ids[r, 1:n].to(device), reduction="mean")
                nll[i] = float(loss)
    return nll, counts


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
        nll, tokens = mean_token_nll(model, tokenizer, batch.column("text").to_pylist(),
                                     self.config.batch_size, self.config.max_tokens)
        with np.errstate(over="ignore"):
            perplexity = np.exp(nll).astype(np.float32)
        return {"perplexity": perplexity, "tokens": tokens}

    def quality(self, scores: dict[str, np.ndarray], domains: np.ndarray) -> np.ndarray:
        """Return 1 - the percentile of the document's perplexity within its domain's day (most fluent ≈ 1).

        Percentiles rather than a fixed scale: perplexity levels differ by model and domain (code, legal and chat
        text are not equally predictable), and a rank within the domain is comparable across both.
        """
        return percentile_quality(scores["perplexity"], domains)

