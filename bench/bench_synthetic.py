"""Benchmark synthetic generation: ``generate_synthetic_day`` with the prepared SmolLM2-135M (transformers backend).

Preparation (not timed) stages a real day as semantic dedup's output: AG News test articles
(``../shared/data/ag_news/test.csv``), world, sports and business ``3 x rows + 40`` each and science ``rows + 10``, so
science is short and has a seed for every chunk; then near dedup signs it, the CPU scorers score it and ``decide``
decides it, as in the stage tests. The generator (and the MiniLM encoder the safeguards use) are loaded before the
clock starts; their load is reported apart. Timed: one ``generate_synthetic_day`` planning exactly ``--rows`` rows
(two pairs per chunk, so one prompt per two rows), SmolLM2 generating and judging its own rows, then scoring,
measuring and deciding them. Output: ``{workdir}/results.json`` and ``results.md``.

    python bench/bench_synthetic.py [--rows 24] [--batch-size 8] [--max-new-tokens 128] [--device cpu] [--threads N]
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
AG_NEWS = REPO.parent / "shared" / "data" / "ag_news" / "test.csv"
DAG = "bench_synthetic"
DT = "2026-03-02"
DOMAINS = {"1": "world", "2": "sports", "3": "business", "4": "science"}
CPU_SCORERS = {"heuristics": {}, "language": {}, "pii": {"redact": True}, "credibility": {}}
QUESTIONS_PER_CHUNK = 2


def news_rows(rows: int) -> list[tuple[str, str, str]]:
    """Return ``(doc_id, text, domain)``: the first articles of each AG News class, science the short domain."""
    if not AG_NEWS.is_file():
        raise SystemExit(f"AG News not found at {AG_NEWS}: the benchmark reads ../shared/data")
    sizes = {domain: 3 * rows + 40 for domain in DOMAINS.values()} | {"science": rows + 10}
    taken = dict.fromkeys(sizes, 0)
    out = []
    with AG_NEWS.open(newline="", encoding="utf-8") as handle:
        for i, (label, title, description) in enumerate(csv.reader(handle)):
            domain = DOMAINS.get(label)
            if domain is None or taken[domain] >= sizes[domain]:
                continue
            taken[domain] += 1
            text = f"{title.strip()}. {description.replace('#39;', chr(39)).replace('quot;', '').strip()}"
            out.append((f"news/{i}", text, domain))
    return out


def prepare_day(root: Path, rows: int, config) -> tuple[object, int]:
    """Stage the day as ``dedup_semantic``, sign, score and decide it; return the storage and the kept real rows."""
    import numpy as np
    import pyarrow as pa

    from dctp_tasks.dedup.near import dedup_near_day
    from dctp_tasks.quality.decide import decide_day
    from dctp_tasks.quality.scoring import score_day
    from dctp_tasks.records import DEDUPED_SCHEMA, content_hashes, empty_lineage
    from dctp_tasks.staging import ROWS, stage_output
    from dctp_tasks.storage import Storage

    articles = news_rows(rows)
    n = len(articles)
    text = pa.array([a[1] for a in articles], pa.string())
    columns = {
        "doc_id": pa.array([a[0] for a in articles], pa.string()), "text": text,
        "prompt": pa.nulls(n, pa.string()), "response": pa.nulls(n, pa.string()),
        "source": pa.array(["news"] * n, pa.string()), "domain": pa.array([a[2] for a in articles], pa.string()),
        "created_at": pa.array(np.full(n, np.datetime64(f"{DT}T00:00:00", "us")), pa.timestamp("us", tz="UTC")),
        "meta": pa.array(["{}"] * n), "dt": pa.array([DT] * n, pa.string()), "synthetic": pa.array(np.zeros(n, bool)),
        "sampling_weight": pa.array(np.ones(n)), "lineage": empty_lineage(n), "lang": pa.array(["en"] * n),
        "lang_score": pa.array(np.full(n, 0.9, np.float32)), "content_hash": content_hashes(text),
    }
    storage = Storage(root.as_uri())
    with stage_output(storage, DAG, DT, "dedup_semantic") as out, out.writer(ROWS, schema=DEDUPED_SCHEMA) as writer:
        writer.write(pa.table([columns[f.name] for f in DEDUPED_SCHEMA], schema=DEDUPED_SCHEMA))
    dedup_near_day(storage, config, DAG, DT, input_stage="dedup_semantic")  # writes state/minhash/dt=D
    score_day(storage, config, DAG, DT, "cpu", input_stage="dedup_semantic")
    return storage, decide_day(storage, config, DAG, DT, input_stage="score").kept


def run(args: argparse.Namespace) -> dict:
    import torch

    from dctp_tasks.config import load_config
    from dctp_tasks.quality import lm
    from dctp_tasks.quality.embeddings import EmbeddingConfig, encode
    from dctp_tasks.synthetic.stage import generate_synthetic_day

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model is None and not lm.is_prepared(lm.smollm2_folder()):
        raise SystemExit(f"SmolLM2 is not prepared at {lm.smollm2_folder()}: run `make install`")
    generator = {"backend": "transformers", "model": args.model, "device": args.device, "batch_size": args.batch_size,
                 "max_new_tokens": args.max_new_tokens}
    config = load_config(overrides={
        "quality.scorers": CPU_SCORERS, "quality.classifiers": {},
        # news descriptions run 30-60 words: Gopher's 50-word floor is for web pages
        "quality.thresholds": {"heuristics.too_few_words": 10},
        "synthetic.min_share_of_largest": 1.0, "synthetic.daily_budget": args.rows,
        "synthetic.per_domain_cap": args.rows, "synthetic.max_share": 0.5,
        "synthetic.questions_per_chunk": QUESTIONS_PER_CHUNK, "synthetic.generator": generator})
    root = args.workdir / "day"
    shutil.rmtree(root, ignore_errors=True)
    began = time.perf_counter()
    storage, real = prepare_day(root, args.rows, config)
    prepared = time.perf_counter() - began
    began = time.perf_counter()
    lm.causal_lm(args.model, args.device)  # the generator's own loader, cached: the stage reuses this model
    encode(["warm-up"], EmbeddingConfig.from_dedup(config.dedup_semantic))
    loaded = time.perf_counter() - began
    began = time.perf_counter()
    result = generate_synthetic_day(storage, config, DAG, DT, input_stage="quality")
    wall = time.perf_counter() - began
    if not args.keep_data:
        shutil.rmtree(root, ignore_errors=True)
    x = result.extra
    gen_s, judge_s = x.get("generate_seconds", 0.0), x.get("judge_seconds", 0.0)
    return {
        "rows": args.rows, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "device": args.device, "model": args.model or "SmolLM2-135M-Instruct",
        "torch_threads": torch.get_num_threads(), "real_rows": real, "prepare_seconds": prepared,
        "model_load_seconds": loaded, "stage_seconds": wall, "planned": x["planned"], "chunks": x.get("chunks", 0),
        "candidates": x["generated"], "accepted": x["synthetic"],
        "rejected": dict(result.dropped_by_reason),
        "generate_seconds": gen_s, "generate_prompts": x.get("generate_prompts", 0),
        "generate_prompt_tokens": x.get("generate_prompt_tokens", 0),
        "generate_completion_tokens": x.get("generate_completion_tokens", 0),
        "judge_seconds": judge_s, "judge_prompts": x.get("judge_prompts", 0),
        "judge_completion_tokens": x.get("judge_completion_tokens", 0),
        "generate_tokens_per_s": x.get("generate_completion_tokens", 0) / gen_s if gen_s else 0.0,
        "prompts_per_s": x.get("generate_prompts", 0) / gen_s if gen_s else 0.0,
        "judge_tokens_per_s": x.get("judge_completion_tokens", 0) / judge_s if judge_s else 0.0,
        "candidates_per_s": x["generated"] / wall, "accepted_per_s": x["synthetic"] / wall,
        "generate_share": gen_s / wall, "judge_share": judge_s / wall,
        "accepted_share": x["synthetic"] / x["generated"] if x["generated"] else 0.0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def render(results: dict) -> str:
    r = results["run"]
    rejected = ", ".join(f"{k.removeprefix('synthetic_')} {v}" for k, v in sorted(r["rejected"].items())) or "none"
    return "\n".join([
        "# DCTP synthetic-generation benchmark", "",
        f"{results['machine']}, load {results['load']:.2f}; Python {results['python']}; {r['model']} on "
        f"{r['device']} ({r['torch_threads']} torch threads), batch size {r['batch_size']}, max_new_tokens "
        f"{r['max_new_tokens']}. Day: {r['real_rows']:,} kept AG News rows; plan: {r['planned']} rows from "
        f"{r['chunks']} chunks.", "",
        "| measure | value |", "|---|---:|",
        f"| generator tokens/s (completion tokens / generation seconds) | {r['generate_tokens_per_s']:.1f} |",
        f"| prompts/s (generation) | {r['prompts_per_s']:.3f} |",
        f"| tokens: prompt / completion per prompt | {r['generate_prompt_tokens'] / max(1, r['generate_prompts']):.0f}"
        f" / {r['generate_completion_tokens'] / max(1, r['generate_prompts']):.0f} |",
        f"| judge tokens/s ({r['judge_prompts']} prompts) | {r['judge_tokens_per_s']:.1f} |",
        f"| candidates/s (stage wall) | {r['candidates_per_s']:.3f} |",
        f"| accepted rows/s (stage wall) | {r['accepted_per_s']:.3f} |",
        f"| accepted share | {r['accepted_share']:.0%} ({r['accepted']} of {r['candidates']}) |",
        f"| stage wall s: generation / judge / rest | {r['stage_seconds']:.1f}: {r['generate_seconds']:.1f} "
        f"({r['generate_share']:.0%}) / {r['judge_seconds']:.1f} ({r['judge_share']:.0%}) / "
        f"{r['stage_seconds'] - r['generate_seconds'] - r['judge_seconds']:.1f} |",
        f"| model load s (not in the stage wall) | {r['model_load_seconds']:.1f} |",
        f"| peak RSS | {r['peak_rss_mb']:,.0f} MB |", "",
        f"Rejected: {rejected}.", ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=24, help="synthetic rows planned (two per generation prompt)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, one per core)")
    parser.add_argument("--model", default=None, help="causal LM id or folder (default: the prepared SmolLM2)")
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench-synthetic")
    parser.add_argument("--keep-data", action="store_true", help="keep the staged day under {workdir}/day")
    args = parser.parse_args(argv)
    if not 2 <= args.rows <= 380:
        parser.error("--rows must be 2-380 (a science seed per chunk; at most 200 seeds per domain)")
    args.workdir = args.workdir.resolve()
    results = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "python": platform.python_version(),
               "load": os.getloadavg()[0], "run": run(args)}
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "results.json").write_text(json.dumps(results, indent=2, default=float))
    (args.workdir / "results.md").write_text(render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
