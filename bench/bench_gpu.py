"""Benchmark the GPU queue's model paths at the configured defaults: docs/s, tokens/s, share of the device's peak.

Runs on CUDA when torch sees it, else on the CPU (``--small``: sizes CI runs in seconds). Texts are real Wikipedia
paragraphs (BoolQ's passages, ``../shared/data/boolq_wikipedia``), joined and cut to ``--chars`` (600) characters,
and to 2,000 for the long perplexity run. Paths, each through the project's own code and the config's defaults:

- ``embed_texts`` (the shipped all-MiniLM-L6-v2; semantic dedup, relevance, the toxicity classifier and trained
  classifiers all embed through it);
- ``mean_token_nll`` (the prepared SmolLM2-135M) at 600 and 2,000 characters;
- the toxicity scorer's Detoxify path on a BERT-base with random weights (Detoxify's released weights download from
  the internet; random weights cost the same) and the trained-classifier path (embed + logistic regression);
- semantic dedup's range search: the day against itself and a history against the day, faiss flat on the CPU and
  the torch backend on the device, on random unit vectors with planted duplicates; both must return the same pairs.

Share of peak: the path's model FLOPs (2 x non-embedding parameters per token, plus the LM's output head; attention
left out) over the dense matmul throughput this script measures on the same device in the same dtype. The range
search reports pairs compared per second and the time a 1M-document day against 10M history documents would take at
that rate. Output: ``{workdir}/gpu_results.json`` and ``gpu_results.md``.

    python bench/bench_gpu.py [--small] [--docs 20000] [--search-docs 100000] [--search-history 200000]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
BOOLQ = REPO.parent / "shared" / "data" / "boolq_wikipedia" / "boolq_validation.csv"
RADIUS = 0.9  # semantic dedup's default threshold 0.95 less the report margin 0.05


def passages(count: int, chars: int) -> list[str]:
    """Return ``count`` texts of about ``chars`` characters cut at a word from BoolQ's Wikipedia paragraphs."""
    if not BOOLQ.is_file():
        raise SystemExit(f"BoolQ not found at {BOOLQ}: the benchmark reads ../shared/data")
    with BOOLQ.open(newline="", encoding="utf-8") as handle:
        words = " ".join(dict.fromkeys(row["passage"] for row in csv.DictReader(handle))).split()
    out, start = [], 0
    for _ in range(count):
        text, n = [], 0
        while n < chars:
            word = words[start % len(words)]
            text.append(word)
            n += len(word) + 1
            start += 1
        out.append(" ".join(text))
    return out


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def peak_flops(device: str, dtype) -> float:
    """Return the dense matmul FLOP/s this device reaches in ``dtype`` (the best of a few square products)."""
    import torch

    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for _ in range(5):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        synchronize(device)
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - start))
    return best


def flops_per_token(model, head: bool = False) -> float:
    """Return 2 x the non-embedding parameters (the forward pass's matmuls), plus the output head when asked."""
    params = sum(p.numel() for name, p in model.named_parameters() if "embed" not in name)
    if head:
        params += model.get_output_embeddings().weight.numel()
    return 2.0 * params


def measure(name: str, run, docs: int, tokens, flops: float, peak: float, device: str) -> dict:
    """Time ``run()`` (the caller has warmed the path up); ``tokens`` is a count or a function of ``run``'s result."""
    synchronize(device)
    start = time.perf_counter()
    out = run()
    synchronize(device)
    seconds = time.perf_counter() - start
    tokens = int(tokens(out)) if callable(tokens) else int(tokens)
    row = {"path": name, "docs": docs, "tokens": tokens, "seconds": round(seconds, 3),
           "docs_per_s": round(docs / seconds, 1), "tokens_per_s": round(tokens / seconds, 1),
           "share_of_peak": round(tokens * flops / seconds / peak, 4)}
    print(f"{name:<34} {row['docs_per_s']:>10,.1f} docs/s {row['tokens_per_s']:>12,.0f} tokens/s "
          f"{row['share_of_peak']:>8.2%} of peak", flush=True)
    return row


def bench_embed(texts: list[str], device: str, peak: float) -> list[dict]:
    from dctp_tasks.config import SemanticDedupConfig
    from dctp_tasks.embeddings import embed_texts
    from dctp_tasks.models import sentence_encoder
    from dctp_tasks.quality.classifier import StoredClassifier

    cfg = SemanticDedupConfig(device=device)
    model = sentence_encoder(None, device, None)
    embed_texts(texts[:64], cfg)
    tokens = sum(min(len(ids), model.max_seq_length) for ids in model.tokenizer(texts)["input_ids"])
    flops = flops_per_token(model)
    rows = [measure("embed_texts (MiniLM)", lambda: embed_texts(texts, cfg), len(texts), tokens, flops, peak, device)]
    classifier = StoredClassifier("bench", np.random.default_rng(0).normal(size=384), 0.0, {})
    rows.append(measure("classifier (embed + logistic)", lambda: classifier.probability(embed_texts(texts, cfg)),
                        len(texts), tokens, flops, peak, device))
    return rows


def bench_perplexity(texts: list[str], label: str, device: str, peak: float) -> dict:
    from dctp_tasks.quality.lm import causal_lm
    from dctp_tasks.quality.perplexity import PerplexityConfig, lm_limits, mean_token_nll

    cfg = PerplexityConfig(device=device)
    model, tokenizer = causal_lm(cfg.model, cfg.device)
    limits = lm_limits(model, cfg.batch_size, cfg.token_budget, cfg.max_tokens)
    mean_token_nll(model, tokenizer, texts[:16], limits, cfg.max_tokens)
    return measure(f"mean_token_nll (SmolLM2, {label})",
                   lambda: mean_token_nll(model, tokenizer, texts, limits, cfg.max_tokens), len(texts),
                   lambda out: out[1].sum(), flops_per_token(model, head=True), peak, device)


def bench_toxicity(texts: list[str], device: str, peak: float, folder: Path) -> dict:
    import pyarrow as pa
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    from dctp_tasks.models import default_embedding_model
    from dctp_tasks.quality.toxicity import ToxicityConfig, ToxicityScorer

    base = folder / "bert-base"
    BertConfig(num_labels=6).save_pretrained(base)
    BertTokenizer.from_pretrained(default_embedding_model()).save_pretrained(base)  # BERT's uncased vocabulary
    classes = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
    model = BertForSequenceClassification(BertConfig.from_pretrained(base, num_labels=6))
    checkpoint = folder / "detoxify.ckpt"
    torch.save({"config": {"arch": {"args": {"model_type": str(base), "model_name": "BertForSequenceClassification",
                                             "tokenizer_name": "BertTokenizer", "num_classes": 6}},
                           "dataset": {"args": {"classes": classes}}},
                "state_dict": model.state_dict()}, checkpoint)
    scorer = ToxicityScorer(ToxicityConfig(checkpoint=str(checkpoint), device=device))
    scorer.prepare()
    batch = pa.RecordBatch.from_pydict({"text": texts})
    scorer.score(pa.RecordBatch.from_pydict({"text": texts[:16]}))
    tokenizer = scorer._model.tokenizer
    tokens = sum(min(len(ids), 512) for ids in tokenizer(texts)["input_ids"])
    return measure("toxicity (Detoxify BERT-base)", lambda: scorer.score(batch), len(texts), tokens,
                   flops_per_token(scorer._model.model), peak, device)


def planted_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """Return ``n`` unit rows, 5 % of them near copies of others (cosine ≈ 0.95-0.99), rounded as stored (fp16)."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    copies = rng.choice(n, size=n // 20, replace=False)
    vectors[copies] = vectors[rng.integers(0, n, size=len(copies))] + rng.normal(scale=0.15, size=(len(copies), dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float16).astype(np.float32)


def bench_search(docs: int, history: int, device: str) -> list[dict]:
    from dctp_tasks.dedup.search import build_index, range_search

    day = planted_vectors(docs, 384, seed=1)
    past = np.concatenate([planted_vectors(history, 384, seed=2), day[: docs // 20] * 1.0])
    rows, found = [], {}
    for backend, where in (("faiss", "cpu"), ("torch", device)):
        start = time.perf_counter()
        index = build_index(day, backend, device=where)
        day_pairs = range_search(index, day, RADIUS)
        history_pairs = range_search(index, past, RADIUS)
        synchronize(where)
        seconds = time.perf_counter() - start
        compared = docs * (docs + len(past))
        found[backend] = (day_pairs, history_pairs)
        row = {"path": f"range search ({backend} on {where})", "docs": docs, "history": len(past),
               "seconds": round(seconds, 3), "pairs_found": int(len(day_pairs[0]) + len(history_pairs[0])),
               "comparisons_per_s": round(compared / seconds), "projected_1m_vs_10m_s": round(1e6 * 11e6 /
                                                                                                 (compared / seconds))}
        rows.append(row)
        print(f"{row['path']:<34} {seconds:>8.2f} s {row['comparisons_per_s']:>16,} pairs/s; 1M vs 10M history ≈ "
              f"{row['projected_1m_vs_10m_s']:,} s", flush=True)
    same = all(np.array_equal(a, b) for ours, theirs in zip(found["faiss"], found["torch"], strict=True)
               for a, b in zip(ours, theirs, strict=True))
    for row in rows:
        row["identical_pairs"] = same
    if not same:
        raise SystemExit("the torch range search returned other pairs than faiss")
    return rows


def render(result: dict) -> str:
    lines = [f"# GPU paths on {result['device_name']} ({result['device']})", "",
             f"torch {result['torch']}, peak measured {result['peak_tflops']:.1f} TFLOP/s ({result['dtype']})", "",
             "| path | docs | docs/s | tokens/s | share of peak |", "|---|---:|---:|---:|---:|"]
    for row in result["models"]:
        lines.append(f"| {row['path']} | {row['docs']:,} | {row['docs_per_s']:,.1f} | {row['tokens_per_s']:,.0f} | "
                     f"{row['share_of_peak']:.2%} |")
    lines += ["", "| range search | day x (day + history) | seconds | comparisons/s | 1M vs 10M (projected) |",
              "|---|---|---:|---:|---:|"]
    for row in result["search"]:
        lines.append(f"| {row['path']} | {row['docs']:,} x {row['docs'] + row['history']:,} | {row['seconds']} | "
                     f"{row['comparisons_per_s']:,} | {row['projected_1m_vs_10m_s']:,} s |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="CI sizes: a few dozen documents per path")
    parser.add_argument("--docs", type=int, default=None, help="documents per model path (default 20000; CPU 200)")
    parser.add_argument("--chars", type=int, default=600)
    parser.add_argument("--search-docs", type=int, default=None)
    parser.add_argument("--search-history", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench-gpu")
    args = parser.parse_args()

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    default_docs, default_search = (20_000, 100_000) if device == "cuda" else (200, 20_000)
    docs = 24 if args.small else args.docs or default_docs
    search_docs = 2_000 if args.small else args.search_docs or default_search
    history = 2_000 if args.small else args.search_history or 2 * search_docs
    dtype = torch.float32
    if device == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    peak = peak_flops(device, dtype)
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    print(f"device {device} ({name}), torch {torch.__version__}, {os.cpu_count()} CPU cores, "
          f"measured peak {peak / 1e12:.2f} TFLOP/s in {dtype}", flush=True)
    short, long = passages(docs, args.chars), passages(max(docs // 3, 8), 2_000)
    models = bench_embed(short, device, peak)
    models.append(bench_perplexity(short, f"{args.chars} chars", device, peak))
    models.append(bench_perplexity(long, "2,000 chars", device, peak))
    with tempfile.TemporaryDirectory() as folder:
        models.append(bench_toxicity(short, device, peak, Path(folder)))
    result = {"device": device, "device_name": name, "torch": torch.__version__, "dtype": str(dtype),
              "cpu_cores": os.cpu_count(), "peak_tflops": peak / 1e12, "small": args.small, "models": models,
              "search": bench_search(search_docs, history, device),
              "load_1min": round(os.getloadavg()[0], 2)}
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "gpu_results.json").write_text(json.dumps(result, indent=2))
    (args.workdir / "gpu_results.md").write_text(render(result))
    print(f"results: {args.workdir / 'gpu_results.md'}")


if __name__ == "__main__":
    main()
