"""Benchmark ``dctp al-simulate`` on the real Jigsaw file (5,000 comments, ``is_bad``): wall time and learning curves.

Two fresh subprocesses run the command's code path (``add_parser`` + ``al_simulate``, as ``dctp al-simulate``):

- ``single``: one strategy (margin, plus the random baseline the command always adds), one seed, 10 rounds x 50:
  what a user waits for one run, model load and encoding included.
- ``compare``: ``--compare margin,qbc,coreset,random,least-confidence,entropy --seeds 0,1,2``: the whole comparison;
  the texts are encoded once and shared, so its cost is one encoding plus the strategies' rounds.

    python bench/bench_al_simulate.py [--seeds 0,1,2] [--compare ...] [--budget 50] [--rounds 10] [--workdir .bench]

Writes ``{workdir}/al-simulate/{single,compare}/`` (the command's CSV, PNG, summary.json) and
``{workdir}/al_simulate_results.{md,json}``. Target: 10 rounds on the Jigsaw file in under 5 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dedup import run_child

REPO = Path(__file__).resolve().parent.parent
JIGSAW = REPO.parent / "shared" / "data" / "jigsaw_toxic" / "train.5k.csv"
COMPARE = "margin,qbc,coreset,random,least-confidence,entropy"
TARGET_SECONDS = 300


def child(out: Path, argv: list[str]) -> dict:
    """Run ``dctp al-simulate`` in this process; return its summary plus wall seconds and peak RSS."""
    from dctp_tasks.cli.al_simulate import add_parser, al_simulate

    start = time.perf_counter()
    parser = argparse.ArgumentParser(prog="dctp")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["al-simulate", "--data", str(JIGSAW), "--text-column", "comment_text",
                              "--label-column", "is_bad", "--out", str(out), *argv])
    result = al_simulate(None, None, args)
    import torch

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {**result, "wall_seconds": round(time.perf_counter() - start, 2), "torch_threads": torch.get_num_threads(),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_mb": usage.ru_maxrss / 1024}


def run(name: str, out: Path, argv: list[str]) -> dict:
    start, load = time.perf_counter(), os.getloadavg()[0]
    result = run_child(str(Path(__file__).resolve()), str(out), *argv,
                       env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    result["process_seconds"] = round(time.perf_counter() - start, 2)
    # Wall time on a shared machine depends on its other work: the load averages tell how much there was.
    result["load_average"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    print(f"[{name}] {result['process_seconds']:.1f} s (encoding {result['encode_seconds']:.1f} s), "
          f"{result['cpu_seconds']:.0f} CPU s, load {load:.1f} -> {result['load_average'][1]:.1f}", flush=True)
    return result


def render(results: dict) -> str:
    lines = ["# DCTP al-simulate benchmark", "", f"{results['machine']}; Python {results['python']}; "
             f"Jigsaw toxic 5k (`is_bad`), MiniLM-L6 on the CPU.", "",
             "| run | strategies x seeds | encode | strategies | process wall | CPU time | load avg (1 min) "
             "| peak RSS |", "|---|---|---:|---:|---:|---:|---|---:|"]
    for name in ("single", "compare"):
        r = results.get(name)
        if r:
            spent = sum(r["strategy_seconds"].values())
            lines.append(f"| {name} | {len(r['strategies'])} x {len(r['seeds'])} | {r['encode_seconds']:.1f} s "
                         f"| {spent:.1f} s | {r['process_seconds']:.1f} s | {r['cpu_seconds']:.0f} s "
                         f"| {r['load_average'][0]:.1f} -> {r['load_average'][1]:.1f} | {r['peak_rss_mb']:,.0f} MB |")
    compare = results.get("compare") or results["single"]
    lines += ["", "Seconds per strategy and seed (10 rounds of fit + query + measure, encoding excluded): "
              + ", ".join(f"{s} {t:.1f}" for s, t in compare["seconds_per_run"].items()) + ".", "",
              f"Target: one 10-round run on the Jigsaw file < {TARGET_SECONDS // 60} minutes.", "", "```",
              compare["summary"], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        print("BENCH_RESULT " + json.dumps(child(Path(argv[1]), argv[2:]), default=float))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--compare", default=COMPARE)
    parser.add_argument("--budget", default="50")
    parser.add_argument("--rounds", default="10")
    parser.add_argument("--no-single", action="store_true", help="skip the one-strategy, one-seed run")
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench")
    args = parser.parse_args(argv)
    if not JIGSAW.is_file():
        raise SystemExit(f"Jigsaw sample not found at {JIGSAW}: the benchmark reads ../shared/data")
    workdir = args.workdir.resolve()
    common = ["--budget", args.budget, "--rounds", args.rounds]
    results: dict = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "python": platform.python_version()}
    if not args.no_single:
        results["single"] = run("single", workdir / "al-simulate" / "single",
                                [*common, "--strategy", "margin", "--seed", args.seeds.split(",")[0]])
    results["compare"] = run("compare", workdir / "al-simulate" / "compare",
                             [*common, "--compare", args.compare, "--seeds", args.seeds])
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "al_simulate_results.json").write_text(json.dumps(results, indent=2, default=float))
    (workdir / "al_simulate_results.md").write_text(render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
