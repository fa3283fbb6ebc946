"""Benchmark near-duplicate dedup (MinHash + LSH + history lookup) and semantic dedup on synthetic days.

Near dedup: ``dedup_near_day`` on staged ``dedup_exact`` output of N documents of ≈600 characters, against a
history of ``--history`` documents (``state/minhash/dt=HISTORY_DT``, built once per workdir by running
``dedup_near_day`` on an earlier date and reused by every N). About 5 % of each day's documents are edited copies of
history documents and 5 % edited copies of earlier documents of the same day, so the lookup finds real matches.
Each run (history build, every N, semantic) is one fresh subprocess, so peak memory is per run. Time is split
into signatures / LSH + clustering / history scan / state + output by wrapping ``dedup_near``'s module-level
helpers (the library is not changed).

Semantic dedup: ``dedup_semantic_day`` on ``--semantic-docs`` English-like documents of ≈600 characters on the CPU;
the model load is timed separately. Results go to ``{workdir}/dedup_results.md`` and ``dedup_results.json``.

    python bench/bench_dedup.py --sizes 10000 100000 1000000 [--history 1000000] [--workdir .bench-dedup]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_spine import WORDS, _maxrss_mb, _reset_peak, _vm_hwm_mb

REPO = Path(__file__).resolve().parent.parent
HISTORY_DT = "2026-01-01"
DT = "2026-01-02"
SOURCE = "web"
HISTORY_DAG = "bench_history"
SEMANTIC_DAG = "bench_semantic"

#: The targets this benchmark checks.
TARGET_DOCS_S = 10_000
TARGET_PEAK_RSS_MB = 3072

VOCAB = 50_000  # pseudo-words, Zipf-distributed: 5-word shingles of unrelated docs rarely coincide
MIN_WORDS, MAX_WORDS = 75, 110  # ≈ 600 characters at ≈ 6.5 characters per word and space
CHUNK = 50_000  # rows generated and written at a time

# --------------------------------------------------------------------------------------------------------------
# Synthetic corpus: token ids in NumPy, texts gathered from one byte buffer
# --------------------------------------------------------------------------------------------------------------


class _Vocab:
    """``VOCAB`` pseudo-words of 2-10 lower-case letters, each followed by a space, in one byte buffer."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        lengths = rng.integers(2, 11, size=VOCAB)
        letters = rng.integers(ord("a"), ord("z") + 1, size=int(lengths.sum()), dtype=np.uint8)
        ends = np.cumsum(lengths + 1)
        buffer = np.full(int(ends[-1]), ord(" "), dtype=np.uint8)
        starts = ends - lengths - 1
        buffer[np.repeat(starts, lengths) + np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths,
                                                                                       lengths)] = letters
        self.buffer, self.offset, self.length = buffer, starts, lengths + 1
        zipf = 1.0 / (np.arange(VOCAB) + 10.0)
        self.cdf = np.cumsum(zipf / zipf.sum())

    def draw(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return np.minimum(np.searchsorted(self.cdf, rng.random(shape)), VOCAB - 1).astype(np.int32)

    def texts(self, ids: np.ndarray, words: np.ndarray):
        """Return a pyarrow string array: row i is the words ``ids[i, :words[i]]`` joined by spaces."""
        import pyarrow as pa

        flat = ids[np.arange(ids.shape[1])[None, :] < words[:, None]]
        lengths = self.length[flat]
        ends = np.cumsum(lengths)
        index = np.repeat(self.offset[flat] - (ends - lengths), lengths) + np.arange(int(ends[-1]), dtype=np.int64)
        data = self.buffer[index]
        doc_ends = ends[np.cumsum(words) - 1]
        data[doc_ends - 1] = ord(".")  # every doc ends with "word." instead of a trailing space
        offsets = np.concatenate([[0], doc_ends]).astype(np.int32)
        return pa.StringArray.from_buffers(len(words), pa.py_buffer(offsets.tobytes()), pa.py_buffer(data.tobytes()))


def _edit(rng: np.random.Generator, ids: np.ndarray, words: np.ndarray) -> None:
    """Replace one or two random words of each row in place: 5-gram Jaccard to the original ≈ 0.8-0.9."""
    for share in (1.0, 0.5):
        rows = np.flatnonzero(rng.random(len(ids)) < share)
        ids[rows, rng.integers(0, words[rows])] = rng.integers(0, VOCAB, size=len(rows), dtype=np.int32)


def _day_ids(vocab: _Vocab, n: int, seed: int | list[int]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return vocab.draw(rng, (n, MAX_WORDS)), rng.integers(MIN_WORDS, MAX_WORDS + 1, size=n)


def stage_day(root: Path, dag_id: str, dt: str, n: int, seed: int | list[int], prefix: str,
              history: tuple | None = None, history_share: float = 0.05, day_share: float = 0.05,
              texts_of=None) -> dict:
    """Write ``n`` rows as ``staging/{dag_id}/dt={dt}/dedup_exact`` (DEDUPED_SCHEMA); return what was planted.

    ``history`` is ``(ids, words)`` of the history documents: a share of today's rows become edited copies of them.
    """
    import pyarrow as pa

    from dctp_tasks.records import DEDUPED_SCHEMA, content_hashes, empty_lineage
    from dctp_tasks.staging import ROWS, stage_output
    from dctp_tasks.storage import Storage

    vocab = _Vocab()
    ids, words = _day_ids(vocab, n, seed)
    rng = np.random.default_rng([*np.atleast_1d(seed).tolist(), 1])
    planted = {"docs": n, "history_copies": 0, "day_copies": 0}
    if history is not None:
        rows = np.flatnonzero(rng.random(n) < history_share)
        src = rng.integers(0, len(history[0]), size=len(rows))
        edited, words[rows] = history[0][src], history[1][src]  # fancy indexing copies: edit, then store
        _edit(rng, edited, words[rows])
        ids[rows] = edited
        planted["history_copies"] = len(rows)
    rows = np.flatnonzero((rng.random(n) < day_share) & (np.arange(n) > 0))
    src = (rng.random(len(rows)) * rows).astype(np.int64)  # an earlier row of the same day
    edited, words[rows] = ids[src].copy(), words[src]
    _edit(rng, edited, words[rows])
    ids[rows] = edited
    planted["day_copies"] = len(rows)
    storage = Storage(root.as_uri())
    day = np.datetime64(f"{dt}T00:00:00", "us")
    with stage_output(storage, dag_id, dt, "dedup_exact") as out, out.writer(ROWS, schema=DEDUPED_SCHEMA) as writer:
        for lo in range(0, n, CHUNK):
            m = min(CHUNK, n - lo)
            text = texts_of(lo, m) if texts_of else vocab.texts(ids[lo:lo + m], words[lo:lo + m])
            stamps = day + rng.integers(0, 86_400_000_000, size=m).astype("timedelta64[us]")
            columns = {
                "doc_id": pa.array([f"{SOURCE}/{prefix}{i:08d}" for i in range(lo, lo + m)], pa.string()),
                "text": text, "prompt": pa.nulls(m, pa.string()), "response": pa.nulls(m, pa.string()),
                "source": pa.array([SOURCE] * m, pa.string()), "domain": pa.array(["web"] * m, pa.string()),
                "created_at": pa.array(stamps, pa.timestamp("us", tz="UTC")), "meta": pa.array(["{}"] * m),
                "dt": pa.array([dt] * m, pa.string()), "synthetic": pa.array(np.zeros(m, bool)),
                "sampling_weight": pa.array(np.ones(m)), "lineage": empty_lineage(m),
                "lang": pa.array(["en"] * m, pa.string()), "lang_score": pa.array(np.full(m, 0.9, np.float32)),
                "content_hash": content_hashes(text),
            }
            writer.write(pa.table([columns[f.name] for f in DEDUPED_SCHEMA], schema=DEDUPED_SCHEMA))
    planted["mean_chars"] = float(np.mean([len(t) for t in text.to_pylist()[:2000]]))
    return planted


def english_texts(n: int, seed: int, chars: int = 600):
    """Return ``n`` English-like texts (bench_spine's word list) of about ``chars`` characters, for the encoder."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    words = list(dict.fromkeys(WORDS))
    zipf = 1.0 / (np.arange(len(words)) + 2.7)
    out = []
    for _ in range(n):
        picked = rng.choice(len(words), size=chars // 5, p=zipf / zipf.sum())
        text = " ".join(words[i] for i in picked)[:chars]
        out.append(text[0].upper() + text[1:text.rfind(" ")] + ".")
    return pa.array(out, pa.string())


# --------------------------------------------------------------------------------------------------------------
# Runs, each in a fresh process
# --------------------------------------------------------------------------------------------------------------


def _phase_timers() -> dict[str, float]:
    """Wrap ``dedup_near``'s helpers so each call adds its seconds to the returned dict (keys: phases)."""
    from dctp_tasks.dedup import near as dedup_near

    phases = {"signatures": 0.0, "history_scan": 0.0, "lsh_cluster": 0.0, "write_state": 0.0}
    wrapped = {"history_matches": "history_scan", "_cluster": "lsh_cluster", "_write_state": "write_state"}

    def timed(fn, phase):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[phase] += time.perf_counter() - start
        return call

    for name, phase in wrapped.items():
        setattr(dedup_near, name, timed(getattr(dedup_near, name), phase))
    dedup_near.NEAR.phases["sign"] = timed(dedup_near.NEAR.phases["sign"], "signatures")
    return phases


def run_near(root: Path, dag_id: str, dt: str) -> dict:
    """Run ``dedup_near_day`` on ``root`` in this process; return its measurements."""
    from dctp_tasks.config import load_config
    from dctp_tasks.dedup.near import dedup_near_day
    from dctp_tasks.storage import Storage

    phases = _phase_timers()
    config = load_config()
    storage = Storage(root.as_uri())
    resettable = _reset_peak()
    start = time.perf_counter()
    result = dedup_near_day(storage, config, dag_id, dt)
    seconds = time.perf_counter() - start
    phases["band_keys_and_output"] = seconds - sum(phases.values())  # band keys, reading rows again, writing
    return {
        "seconds": seconds, "stage_seconds": result.seconds, "input_rows": result.total, "kept": result.kept,
        "dropped": dict(result.dropped_by_reason), "extra": result.extra, "phases": phases,
        "docs_per_s": result.total / seconds if seconds else 0.0,
        "peak_rss_main_mb": (_vm_hwm_mb() if resettable else None) or _maxrss_mb(resource.RUSAGE_SELF),
        "peak_rss_workers_mb": _maxrss_mb(resource.RUSAGE_CHILDREN),
        "workers": config.dedup_near.workers or os.cpu_count(), "batch_size": config.batch_size,
    }


def run_semantic(root: Path, n: int, seed: int) -> dict:
    """Stage ``n`` English-like docs and run ``dedup_semantic_day`` on the CPU; model load timed apart."""
    from dctp_tasks.config import load_config
    from dctp_tasks.dedup.semantic import dedup_semantic_day
    from dctp_tasks.models import sentence_encoder
    from dctp_tasks.storage import Storage

    texts = english_texts(n, seed)
    planted = stage_day(root, SEMANTIC_DAG, DT, n, seed, "s", day_share=0.0, texts_of=lambda lo, m: texts[lo:lo + m])
    config = load_config(overrides={"dedup_semantic.device": "cpu"})
    cfg = config.dedup_semantic
    start = time.perf_counter()
    model = sentence_encoder(cfg.model, cfg.device, cfg.max_seq_length)
    load_seconds = time.perf_counter() - start
    sample = texts.to_pylist()[:500]
    tokens = [len(t) for t in model.tokenizer(sample)["input_ids"]]
    import torch

    resettable = _reset_peak()
    start = time.perf_counter()
    result = dedup_semantic_day(Storage(root.as_uri()), config, SEMANTIC_DAG, DT, input_stage="dedup_exact")
    seconds = time.perf_counter() - start
    return {
        "docs": n, "mean_chars": planted["mean_chars"], "mean_tokens": float(np.mean(tokens)),
        "max_seq_length": model.max_seq_length, "model_load_seconds": load_seconds, "seconds": seconds,
        "docs_per_s": n / seconds, "embed_docs_per_s": result.extra.get("embed_docs_per_s"),
        "kept": result.kept, "torch_threads": torch.get_num_threads(), "encode_batch_size": cfg.batch_size,
        "peak_rss_mb": (_vm_hwm_mb() if resettable else None) or _maxrss_mb(resource.RUSAGE_SELF),
    }


def _child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["near", "semantic"])
    parser.add_argument("root", type=Path)
    parser.add_argument("--dag-id", default="bench")
    parser.add_argument("--dt", default=DT)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    if args.kind == "near":
        out = run_near(args.root, args.dag_id, args.dt)
    else:
        out = run_semantic(args.root, args.n, args.seed)
    out["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print("BENCH_RESULT " + json.dumps(out))
    return 0


def run_child(script: str, *argv: str, env: dict[str, str] | None = None) -> dict:
    """Run ``script _child argv…`` in a fresh interpreter (its peak RSS is its own); return its BENCH_RESULT."""
    cmd = [sys.executable, script, "_child", *argv]
    env = {**os.environ, **(env or {}),
           "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO)]))}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise RuntimeError(f"benchmark child {argv} failed with exit code {proc.returncode}")
    return json.loads(lines[-1].removeprefix("BENCH_RESULT "))


def _child(*argv: str) -> dict:
    return run_child(str(Path(__file__).resolve()), *argv)


# --------------------------------------------------------------------------------------------------------------
# Driver and report
# --------------------------------------------------------------------------------------------------------------


def history_ids(root: Path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return _day_ids(_Vocab(), n, seed + 10_000)


def build_history(root: Path, n: int, seed: int) -> dict:
    """Stage and dedup the history date once per workdir; later runs reuse ``state/minhash/dt=HISTORY_DT``."""
    marker = root / "history.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("n") == n and info.get("seed") == seed:
            print(f"[history] reusing {n:,} docs of state/minhash/dt={HISTORY_DT}", flush=True)
            return info
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    planted = stage_day(root, HISTORY_DAG, HISTORY_DT, n, seed + 10_000, "h")
    print(f"[history] staged {n:,} docs in {time.perf_counter() - start:.1f}s; running dedup_near_day", flush=True)
    run = _child("near", str(root), "--dag-id", HISTORY_DAG, "--dt", HISTORY_DT)
    shutil.rmtree(root / "staging" / HISTORY_DAG, ignore_errors=True)
    info = {"n": n, "seed": seed, "planted": planted, "run": run}
    marker.write_text(json.dumps(info, indent=2))
    print(f"[history] {run['seconds']:.1f}s, {run['docs_per_s']:,.0f} docs/s, "
          f"{run['extra']['state_rows']:,} signatures kept as history", flush=True)
    return info


def bench_near(root: Path, n: int, args: argparse.Namespace, history: tuple) -> dict:
    dag_id = f"bench_n{n}"
    start = time.perf_counter()
    # A seed sequence of its own: an int seed could equal the history's and make today a copy of history.
    planted = stage_day(root, dag_id, DT, n, [args.seed, n], "d", history=history)
    gen_seconds = time.perf_counter() - start
    print(f"[n={n:,}] staged in {gen_seconds:.1f}s ({planted['history_copies']:,} history copies, "
          f"{planted['day_copies']:,} same-day copies); running dedup_near_day in a fresh process", flush=True)
    run = _child("near", str(root), "--dag-id", dag_id, "--dt", DT)
    shutil.rmtree(root / "staging" / dag_id, ignore_errors=True)
    run.update(n=n, planted=planted, generate_seconds=gen_seconds,
               finished_at=datetime.now(UTC).isoformat(timespec="seconds"))
    return run


def _fmt(value: float | None, unit: str = "") -> str:
    return "–" if value is None else f"{value:,.0f}{unit}"


def render(results: dict) -> str:
    meta, history, runs = results["meta"], results.get("history"), results["runs"]
    lines = ["# DCTP dedup benchmark", "",
             f"{meta['machine']}; Python {meta['python']}. Near dedup: default config (5-word shingles, 112 perms, "
             "LSH 14 × 8, threshold 0.7), ≈600-char docs of a 50k-word Zipf vocabulary, ~5 % edited copies of "
             "history docs and ~5 % edited copies within the day."]
    if history:
        h = history["run"]
        lines += ["", f"History: {history['n']:,} docs of dt={HISTORY_DT} (built once: {h['seconds']:.1f}s, "
                  f"{h['docs_per_s']:,.0f} docs/s, peak RSS {_fmt(h['peak_rss_main_mb'], ' MB')}; "
                  f"{h['extra']['state_rows']:,} signatures kept)."]
    lines += ["", "| N | seconds | docs/s | signatures s | history scan s | LSH + clusters s | state write s "
              "| rest s | near dups (of history) | peak RSS main | peak RSS workers |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        p, x = run["phases"], run["extra"]
        lines.append(
            f"| {run['n']:,} | {run['seconds']:.1f} | {_fmt(run['docs_per_s'])} | {p['signatures']:.1f} "
            f"| {p['history_scan']:.1f} | {p['lsh_cluster']:.1f} | {p['write_state']:.1f} "
            f"| {p['band_keys_and_output']:.1f} | {run['input_rows'] - run['kept']:,} "
            f"({x['duplicates_of_history']:,}) "
            f"| {_fmt(run['peak_rss_main_mb'], ' MB')} | {_fmt(run['peak_rss_workers_mb'] or None, ' MB')} |")
    lines += ["", f"Targets: ≥ {TARGET_DOCS_S:,} docs/s, peak RSS < {TARGET_PEAK_RSS_MB / 1024:.0f} GB. "
              "'rest' = band keys, re-reading the day, writing `dedup_near` + rejects and the stage report. "
              "Peak RSS workers '–': no worker process ran (RUSAGE_CHILDREN is 0).", ""]
    for run in runs:
        peak = max(run["peak_rss_main_mb"], run["peak_rss_workers_mb"])
        planted = run["planted"]
        lines.append(f"- N={run['n']:,}: docs/s {'ok' if run['docs_per_s'] >= TARGET_DOCS_S else 'MISS'}, "
                     f"RSS {'ok' if peak < TARGET_PEAK_RSS_MB else 'MISS'}; planted {planted['history_copies']:,} "
                     f"history + {planted['day_copies']:,} same-day copies, found "
                     f"{run['extra']['duplicates_of_history']:,} + "
                     f"{run['input_rows'] - run['kept'] - run['extra']['duplicates_of_history']:,}; "
                     f"{run['extra']['candidate_pairs']:,} candidate pairs; dedup_near.workers → {run['workers']}; "
                     f"1-min load {run['load_avg_1m'][0]} → {run['load_avg_1m'][1]}")
    sem = results.get("semantic")
    if sem:
        lines += ["", "Semantic dedup (`dedup_semantic_day`, all-MiniLM-L6-v2, CPU, exact faiss index):", "",
                  "| docs | chars/doc | tokens/doc | model load s | stage s | docs/s (stage) | docs/s (encode only) "
                  "| torch threads | peak RSS |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {sem['docs']:,} | {sem['mean_chars']:.0f} | {sem['mean_tokens']:.0f} "
                  f"| {sem['model_load_seconds']:.1f} | {sem['seconds']:.1f} | {sem['docs_per_s']:,.0f} "
                  f"| {_fmt(sem['embed_docs_per_s'])} | {sem['torch_threads']} | {_fmt(sem['peak_rss_mb'], ' MB')} |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        return _child_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--history", type=int, default=1_000_000, help="history docs (built once per workdir)")
    parser.add_argument("--semantic-docs", type=int, default=2_000, help="0 skips the semantic run")
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench-dedup")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fresh", action="store_true", help="discard earlier results in dedup_results.json")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / "data"
    results_path = workdir / "dedup_results.json"
    previous = {} if args.fresh or not results_path.exists() else json.loads(results_path.read_text())
    runs = {run["n"]: run for run in previous.get("runs", [])}
    results = {"meta": {"machine": f"{platform.machine()} {os.cpu_count()} cores",
                        "python": platform.python_version()},
               "history": previous.get("history"), "semantic": previous.get("semantic")}

    def save() -> None:
        results["runs"] = [runs[n] for n in sorted(runs)]
        results_path.write_text(json.dumps(results, indent=2))
        (workdir / "dedup_results.md").write_text(render(results))

    if args.semantic_docs:
        sem_root = workdir / "semantic"
        shutil.rmtree(sem_root, ignore_errors=True)
        results["semantic"] = _child("semantic", str(sem_root), "--n", str(args.semantic_docs),
                                     "--seed", str(args.seed))
        shutil.rmtree(sem_root, ignore_errors=True)
        print(f"[semantic] {results['semantic']['docs_per_s']:,.0f} docs/s", flush=True)
        save()
    if args.sizes:
        results["history"] = build_history(root, args.history, args.seed)
        history = history_ids(root, args.history, args.seed)
        for n in args.sizes:
            run = bench_near(root, n, args, history)
            runs[n] = run
            print(f"[n={n:,}] {run['seconds']:.1f}s, {run['docs_per_s']:,.0f} docs/s, "
                  + ", ".join(f"{k} {v:.1f}s" for k, v in run["phases"].items())
                  + f"; peak RSS main {run['peak_rss_main_mb']:,.0f} MB, "
                  f"workers {run['peak_rss_workers_mb']:,.0f} MB", flush=True)
            save()
    save()
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
