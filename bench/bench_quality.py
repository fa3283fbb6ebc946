"""Benchmark quality scoring: the CPU scorers at 10k/100k docs, and the model scorers' docs/s on this CPU.

Documents are real BoolQ passages (``../shared/data/boolq_wikipedia``), two per document joined by a blank line
(≈ 1,100 characters), staged as a day's dedup output. Each run is a fresh subprocess, so its peak RSS is its own:

- ``cpu``: ``score_day(…, "cpu")`` with heuristics, language, pii and credibility (the model scorers off), then
  ``decide_day``; per-scorer docs/s, stage docs/s, peak RSS.
- ``perplexity``: ``score_day(…, "gpu")`` with only the perplexity scorer (SmolLM2-135M, CPU) on ``--model-docs``.
- ``toxicity``: only the toxicity scorer on a Detoxify checkpoint of the "original" model's size (BERT-base,
  random weights: no released weights are available offline; the cost depends on the shape, not the values).

    python bench/bench_quality.py --sizes 10000 100000 [--model-docs 200] [--workdir .bench-quality]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dedup import run_child, stage_day
from bench_spine import _maxrss_mb, _reset_peak, _vm_hwm_mb

REPO = Path(__file__).resolve().parent.parent
BOOLQ = REPO.parent / "shared" / "data" / "boolq_wikipedia" / "boolq_validation.csv"
DT = "2026-01-02"
CPU_SCORERS = {"heuristics": {}, "language": {}, "pii": {}, "credibility": {}}
TARGET_HEURISTICS_DOCS_S = 5_000
TARGET_PEAK_RSS_MB = 2048


def passages() -> list[str]:
    if not BOOLQ.is_file():
        raise SystemExit(f"BoolQ passages not found at {BOOLQ}: the benchmark reads ../shared/data")
    with BOOLQ.open(newline="") as handle:
        unique = list(dict.fromkeys(row["passage"] for row in csv.DictReader(handle)))
    return [f"{unique[i]}\n\n{unique[(i + 1) % len(unique)]}" for i in range(len(unique))]


def _stage(root: Path, dag_id: str, n: int) -> float:
    import pyarrow as pa

    docs = passages()
    texts = pa.array([docs[i % len(docs)] for i in range(n)], pa.string())
    planted = stage_day(root, dag_id, DT, n, [3, n], "q", history_share=0.0, day_share=0.0,
                        texts_of=lambda lo, m: texts.slice(lo, m))
    return planted["mean_chars"]


def run_cpu(root: Path, n: int) -> dict:
    from dctp_tasks.config import load_config
    from dctp_tasks.quality.decide import decide_day
    from dctp_tasks.quality.scoring import score_day
    from dctp_tasks.storage import Storage

    chars = _stage(root, "bench_cpu", n)
    storage = Storage(root.as_uri())
    config = load_config(overrides={"quality.scorers": CPU_SCORERS})
    out: dict = {"n": n, "mean_chars": chars}
    for step, call in (("score", lambda: score_day(storage, config, "bench_cpu", DT, "cpu",
                                                   input_stage="dedup_exact")),
                       ("decide", lambda: decide_day(storage, config, "bench_cpu", DT, input_stage="score"))):
        resettable = _reset_peak()
        start = time.perf_counter()
        result = call()
        seconds = time.perf_counter() - start
        out[step] = {"seconds": seconds, "docs_per_s": n / seconds, "extra": {
            k: v for k, v in result.extra.items() if isinstance(v, (int, float))},
            "peak_rss_mb": (_vm_hwm_mb() if resettable else None) or _maxrss_mb(resource.RUSAGE_SELF)}
    return out


def run_model(root: Path, scorer: str, n: int) -> dict:
    from dctp_tasks.config import load_config
    from dctp_tasks.quality.scoring import score_day
    from dctp_tasks.storage import Storage

    chars = _stage(root, f"bench_{scorer}", n)
    settings: dict = {"device": "cpu"}
    if scorer == "toxicity":
        settings["checkpoint"] = str(_bert_base_checkpoint(root / "detoxify"))
    config = load_config(overrides={"quality.scorers": {scorer: settings}})
    storage = Storage(root.as_uri())
    resettable = _reset_peak()
    start = time.perf_counter()
    result = score_day(storage, config, f"bench_{scorer}", DT, "gpu", input_stage="dedup_exact")
    seconds = time.perf_counter() - start
    import torch

    return {"scorer": scorer, "n": n, "mean_chars": chars, "seconds": seconds, "docs_per_s": n / seconds,
            "scorer_docs_per_s": result.extra.get(f"{scorer}_docs_per_s"), "torch_threads": torch.get_num_threads(),
            "peak_rss_mb": (_vm_hwm_mb() if resettable else None) or _maxrss_mb(resource.RUSAGE_SELF)}


def _bert_base_checkpoint(folder: Path) -> Path:
    """Write a Detoxify "original"-shaped checkpoint: BERT-base (12 x 768) with a WordPiece vocab trained here."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    classes = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
    folder.mkdir(parents=True, exist_ok=True)
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(passages(), vocab_size=30_522, min_frequency=2)
    wordpiece.save_model(str(folder))
    BertTokenizer(vocab_file=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=512
                  ).save_pretrained(folder)
    config = BertConfig(vocab_size=wordpiece.get_vocab_size(), num_labels=len(classes))  # bert-base dimensions
    config.save_pretrained(folder)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    path = folder / "original-shape.ckpt"
    torch.save({"config": {"arch": {"args": {"model_type": str(folder), "model_name": "BertForSequenceClassification",
                                             "tokenizer_name": "BertTokenizer", "num_classes": len(classes)}},
                           "dataset": {"args": {"classes": classes}}},
                "state_dict": model.state_dict()}, path)
    return path


def _child(*argv: str) -> dict:
    return run_child(str(Path(__file__).resolve()), *argv, env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})


def render(results: dict) -> str:
    lines = ["# DCTP quality-scoring benchmark", "", f"{results['machine']}; Python {results['python']}. "
             "Documents: two BoolQ passages joined by a blank line.", "",
             "| N | chars/doc | heuristics docs/s | language docs/s | pii docs/s | credibility docs/s "
             "| score stage docs/s | decide docs/s | peak RSS score | peak RSS decide |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in results["cpu"]:
        s, d = run["score"], run["decide"]
        lines.append(f"| {run['n']:,} | {run['mean_chars']:,.0f} | {s['extra']['heuristics_docs_per_s']:,.0f} "
                     f"| {s['extra']['language_docs_per_s']:,.0f} | {s['extra']['pii_docs_per_s']:,.0f} "
                     f"| {s['extra']['credibility_docs_per_s']:,.0f} | {s['docs_per_s']:,.0f} "
                     f"| {d['docs_per_s']:,.0f} | {s['peak_rss_mb']:,.0f} MB | {d['peak_rss_mb']:,.0f} MB |")
    lines += ["", f"Targets: heuristics ≥ {TARGET_HEURISTICS_DOCS_S:,} docs/s; scoring 100k documents with the model "
              f"scorers off < {TARGET_PEAK_RSS_MB / 1024:.0f} GB RSS.", ""]
    if results.get("models"):
        lines += ["| model scorer | docs | chars/doc | docs/s (stage) | docs/s (scorer) | torch threads | peak RSS |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for m in results["models"]:
            lines.append(f"| {m['scorer']} | {m['n']:,} | {m['mean_chars']:,.0f} | {m['docs_per_s']:.1f} "
                         f"| {m['scorer_docs_per_s'] or 0:.1f} | {m['torch_threads']} | {m['peak_rss_mb']:,.0f} MB |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        kind, root, n = argv[1], Path(argv[2]), int(argv[3])
        out = run_cpu(root, n) if kind == "cpu" else run_model(root, kind, n)
        print("BENCH_RESULT " + json.dumps(out, default=float))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--model-docs", type=int, default=200, help="documents per model scorer (0: skip)")
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench-quality")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    results: dict = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "python": platform.python_version(),
                     "cpu": [], "models": []}
    for n in args.sizes:
        root = workdir / f"cpu-{n}"
        shutil.rmtree(root, ignore_errors=True)
        run = _child("cpu", str(root), str(n))
        results["cpu"].append(run)
        peak = max(run["score"]["peak_rss_mb"], run["decide"]["peak_rss_mb"])
        print(f"[cpu n={n:,}] score {run['score']['docs_per_s']:,.0f} docs/s, "
              f"decide {run['decide']['docs_per_s']:,.0f} docs/s, peak {peak:,.0f} MB", flush=True)
        shutil.rmtree(root, ignore_errors=True)
    if args.model_docs:
        for scorer in ("perplexity", "toxicity"):
            root = workdir / scorer
            shutil.rmtree(root, ignore_errors=True)
            run = _child(scorer, str(root), str(args.model_docs))
            results["models"].append(run)
            print(f"[{scorer}] {run['docs_per_s']:.1f} docs/s on the CPU", flush=True)
            shutil.rmtree(root, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "quality_results.json").write_text(json.dumps(results, indent=2, default=float))
    (workdir / "quality_results.md").write_text(render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
