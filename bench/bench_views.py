"""Benchmark materialized views (``dctp_tasks.export.views.materialize``) on a table of ``--rows`` instruction rows.

Preparation (not timed): the HH-RLHF harmless test dialogues from ``../shared/data`` are cut into prompt/response
pairs (the dialogue up to its last assistant turn, and that turn), repeated with distinct ids up to ``--rows``, and
written as a Delta table of four dates with the export's schema (``split`` hashed from ``doc_id``).

Timed, each into a fresh folder: ``chat`` JSONL.zst (the target: ≥ 50,000 rows/s at 1M rows), ``text`` JSONL.zst
and ``parquet``, at the default shard size; then a weighted ``--sample`` of the chat view. Reported: seconds, rows/s,
MB written, and the peak RSS of each run (VmHWM, reset before it). Results: ``{workdir}/views_results.md`` and
``views_results.json``.

    python bench/bench_views.py --rows 1000000 [--workdir .bench-views]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_spine import _reset_peak, _vm_hwm_mb

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "hh_rlhf_harmless" / "harmless-base_test.jsonl.gz"
DATES = ("2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04")


def pairs() -> list[tuple[str, str]]:
    """Return (prompt, response) pairs: each chosen dialogue up to its last assistant turn, and that turn."""
    out = []
    with gzip.open(DATA, "rt") as lines:
        for line in lines:
            dialogue = json.loads(line)["chosen"]
            head, _, last = dialogue.rpartition("\n\nAssistant:")
            if head.strip() and last.strip():
                out.append((head.strip(), last.strip()))
    return out


def build_table(root: Path, rows: int) -> None:
    """Write ``rows`` instruction rows as a Delta table of four dates under ``root/datasets/curated``."""
    from deltalake import write_deltalake

    from dctp_tasks.records import EXPORT_SCHEMA, conform, empty_lineage, split_for

    base = pairs()
    picks = np.arange(rows) % len(base)
    for d, dt in enumerate(DATES):
        part = picks[d::len(DATES)]
        ids = pa.array([f"instruct/{dt}/{i}" for i in range(len(part))])
        prompts = pa.array([base[i][0] for i in part])
        responses = pa.array([base[i][1] for i in part])
        n = len(part)
        table = pa.table({
            "doc_id": ids, "text": pc.binary_join_element_wise(prompts, responses, "\n\n"),
            "prompt": prompts, "response": responses, "source": pa.array(["instruct"] * n),
            "domain": pa.array(["dialogue"] * n), "meta": pa.array(["{}"] * n), "dt": pa.array([dt] * n),
            "synthetic": pa.array(np.zeros(n, dtype=bool)), "sampling_weight": pa.array(1.0 + (np.arange(n) % 4)),
            "lineage": empty_lineage(n), "lang": pa.array(["en"] * n),
            "lang_score": pa.array(np.full(n, 0.95, dtype=np.float32)),
            "content_hash": pa.array([f"{i:032x}" for i in part]), "split": split_for(ids, 0.05, 0.05),
        })
        write_deltalake(str(root / "datasets" / "curated"), conform(table, EXPORT_SCHEMA), mode="append",
                        partition_by=["dt"])


def timed(root: Path, workdir: Path, name: str, spec) -> dict:
    from dctp_tasks.export.views import materialize
    from dctp_tasks.storage import Storage

    out = workdir / "views" / name
    shutil.rmtree(out, ignore_errors=True)
    _reset_peak()
    start = time.perf_counter()
    manifest = materialize(Storage(root.as_uri()), "curated", None, Storage(out.as_uri()), spec)
    seconds = time.perf_counter() - start
    written = sum(f["bytes"] for f in manifest["files"])
    return {"view": name, "rows": manifest["rows"], "files": len(manifest["files"]), "seconds": round(seconds, 2),
            "rows_per_s": round(manifest["rows"] / seconds), "mb_written": round(written / 1e6, 1),
            "peak_rss_mb": round(_vm_hwm_mb() or 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", default=".bench-views")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from dctp_tasks.export.formats import FormatOptions
    from dctp_tasks.export.views import ViewSpec

    workdir = Path(args.workdir).resolve()
    root = workdir / "root"
    if args.build_only:
        build_table(root, args.rows)
        return
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    # built in a child process, so the peaks measured here are the views' own
    subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--workdir", str(workdir), "--build-only"],
                   check=True)
    print(f"built a table of {args.rows:,} rows in {time.perf_counter() - start:.1f} s", flush=True)
    runs = [
        timed(root, workdir, "chat.jsonl.zst", ViewSpec("chat", options=FormatOptions(system_prompt="Be helpful."))),
        timed(root, workdir, "text.jsonl.zst", ViewSpec("text")),
        timed(root, workdir, "parquet", ViewSpec("parquet")),
        timed(root, workdir, "chat sample", ViewSpec("chat", sample=args.rows // 2, seed=1)),
    ]
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    lines = [f"# Materialized views, {args.rows:,} rows ({machine})", "",
             "| view | rows | files | seconds | rows/s | MB written | peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['view']} | {r['rows']:,} | {r['files']} | {r['seconds']} | {r['rows_per_s']:,} | "
              f"{r['mb_written']:,} | {r['peak_rss_mb']:,} |" for r in runs]
    text = "\n".join(lines)
    print(text)
    (workdir / "views_results.md").write_text(text + "\n")
    (workdir / "views_results.json").write_bytes(orjson.dumps({"rows": args.rows, "machine": machine, "runs": runs},
                                                              option=orjson.OPT_INDENT_2))
    shutil.rmtree(workdir / "views", ignore_errors=True)


if __name__ == "__main__":
    main()
