"""Benchmark the pipeline's spine — ingest → normalize → dedup_exact → export — on synthetic days of N documents.

For each N a fresh landing zone of ≈1 KB English-like documents is generated (not timed), then one fresh
subprocess runs the four stages through the library and reports seconds, rows/s and peak RSS per stage, so
peak memory is per N. Results go to ``{workdir}/results.md`` and ``{workdir}/results.json``.

    python bench/bench_spine.py --sizes 10000 100000 1000000 [--workdir .bench] [--seed 1]
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

REPO = Path(__file__).resolve().parent.parent
DT = "2026-01-01"
SOURCE = "web"
DAG_ID = "bench"

#: The targets this benchmark checks.
TARGET_SPINE_ROWS_S = 20_000  # ingest + dedup_exact + export together
TARGET_NORMALIZE_ROWS_S = 5_000  # normalize incl. ftfy and language ID
TARGET_PEAK_RSS_MB = 2048  # at 1M documents

# --------------------------------------------------------------------------------------------------------------
# Synthetic corpus
# --------------------------------------------------------------------------------------------------------------

# Common English words, roughly by frequency: fastText sees English, ftfy sees mostly ASCII.
WORDS = """
the of and to in a is that for it as was with be by on not he this are or his from at which but have an
they you were their one all we can her has there been if more when will would who so no she other its
may these about some what them than time into only could new people two first also after any like should
year our well over such world make way even because many most through where much before just those how
state work long between three each government both life under never day same another know while last
might great old still public found must last school take four city system large small report use number
country week while since during again high given around family power group important market health data
around early local company money water business program level best service part city course policy later
research team study result change million percent members support order three better market future month
across development service community history model question energy price industry project growth period
economic report include increase building experience information national provide continue plan area
several against without process early early value education social technology interest house control
security space problem effect reason paper story light music film game player season match council court
police official election party minister region village river mountain coast island ocean forest weather
rain summer winter spring morning evening night food market coffee bread garden kitchen table window street
road train station airport flight hotel travel visitors museum library student teacher doctor patient nurse
hospital science scientist engineer software computer network phone internet website online users privacy
climate carbon emissions battery electric solar wind power plant factory workers jobs wages prices inflation
bank loan credit savings investors shares profit revenue quarter annual budget tax reform pension housing
rent mortgage building construction bridge tunnel project design quality safety standard rule law case trial
judge evidence decision agreement meeting talks leaders members board director manager staff customer client
product feature release update version tool method approach analysis review survey sample results findings
evidence trend pattern signal growth decline rise fall increase decrease average median total share rate
said says told asked added noted explained warned expected believed suggested reported announced confirmed
found showed made took gave came went saw knew thought seemed became began kept held brought left turned
new good high small large big long little young old different important early local public able free full
clear simple strong recent major possible likely certain real true whole general common special human
""".split()

# Accented words, curly quotes and symbols: ~10 % of documents carry a few of these.
ACCENTED = ("café", "naïve", "résumé", "façade", "Zürich", "São Paulo", "jalapeño", "Ångström", "crème brûlée",
            "déjà vu", "señor", "fiancée", "Müller", "Kraków", "Genève", "Québec", "piñata", "coöperation",
            "Málaga", "Bogotá", "Dvořák", "Łódź", "smörgåsbord", "über", "entrée", "€25", "£40", "—",
            "it’s", "“indeed”", "naïveté", "Curaçao", "Ærø", "Øresund")


def _mojibake(text: str) -> str:
    """Return ``text`` as UTF-8 bytes wrongly decoded as Windows-1252 (Latin-1 where cp1252 has no character)."""
    return "".join(bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in text.encode("utf-8"))


class _Tokens:
    """Every token variant as JSON-escaped bytes in one buffer, so documents are gathered with NumPy."""

    def __init__(self) -> None:
        words = list(dict.fromkeys(WORDS))
        self.v = len(words)
        self.a = len(ACCENTED)
        variants = [
            [w + " " for w in words],  # 0: plain
            [w.capitalize() + " " for w in words],  # 1: sentence start
            [w + ". " for w in words],  # 2: sentence end
            [w + ", " for w in words],  # 3: comma
            [w + ".\\n\\n" for w in words],  # 4: paragraph end (a JSON-escaped blank line)
            [a + " " for a in ACCENTED],  # 5: non-ASCII
            [_mojibake(a) + " " for a in ACCENTED],  # 6: mojibake
        ]
        entries = [e.encode("utf-8") for block in variants for e in block]
        self.base = np.cumsum([0] + [len(block) for block in variants])[:-1]
        self.buffer = np.frombuffer(b"".join(entries), dtype=np.uint8)
        self.length = np.array([len(e) for e in entries], dtype=np.int64)
        self.offset = np.concatenate([[0], np.cumsum(self.length)[:-1]])
        zipf = 1.0 / (np.arange(self.v) + 2.7)  # WORDS is roughly in frequency order
        self.p = zipf / zipf.sum()
        self.mean_bytes = float((self.p * self.length[: self.v]).sum())


def _gather(tokens: _Tokens, ids: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Concatenate the tokens ``ids``; return the bytes and each token's end offset."""
    lengths = tokens.length[ids]
    ends = np.cumsum(lengths)
    starts = ends - lengths
    index = np.repeat(tokens.offset[ids] - starts, lengths) + np.arange(int(ends[-1]), dtype=np.int64)
    return tokens.buffer[index].tobytes(), ends


def generate_texts(rng: np.random.Generator, tokens: _Tokens, n: int, doc_bytes: int = 1000,
                   non_ascii: float = 0.10, mojibake: float = 0.005) -> list[bytes]:
    """Return ``n`` JSON-escaped documents of about ``doc_bytes`` bytes of English-like prose."""
    mean_words = doc_bytes / tokens.mean_bytes
    counts = rng.integers(int(mean_words * 0.6), int(mean_words * 1.4) + 1, size=n)
    total = int(counts.sum())
    ends = np.cumsum(counts)
    starts = ends - counts
    ids = rng.choice(tokens.v, size=total, p=tokens.p)
    sentence_end = rng.random(total) < 1 / 13
    sentence_end[ends - 1] = True
    variant = np.zeros(total, dtype=np.int64)
    variant[rng.random(total) < 1 / 15] = 3
    variant[sentence_end] = 2
    variant[sentence_end & (rng.random(total) < 0.15)] = 4
    variant[ends - 1] = 2
    first = np.zeros(total, dtype=bool)
    first[1:] = sentence_end[:-1]
    first[starts] = True
    variant[first & ~sentence_end] = 1
    ids = tokens.base[variant] + ids
    # A few accented (or mojibake) words in a share of the documents.
    special = rng.random(n) < non_ascii
    broken = special & (rng.random(n) < mojibake / non_ascii)
    for kind, docs in ((5, np.flatnonzero(special & ~broken)), (6, np.flatnonzero(broken))):
        if len(docs):
            slots = starts[docs, None] + rng.integers(0, counts[docs, None] - 1, size=(len(docs), 3))
            ids[slots.ravel()] = tokens.base[kind] + rng.integers(0, tokens.a, size=slots.size)
    buffer, token_ends = _gather(tokens, ids)
    doc_ends = token_ends[ends - 1] - 1  # drop the last token's trailing space
    doc_starts = np.concatenate([[0], token_ends[ends[:-1] - 1]])
    return [buffer[s:e] for s, e in zip(doc_starts.tolist(), doc_ends.tolist(), strict=True)]


def generate_landing(root: Path, n: int, seed: int, rows_per_file: int, dup_share: float = 0.05,
                     short_share: float = 0.002) -> dict:
    """Write ``n`` documents as JSONL files under ``root/landing/web/dt=…``; return what was written."""
    out = root / "landing" / SOURCE / f"dt={DT}"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokens = _Tokens()
    domains = np.array([b"science", b"technology", b"health", b"finance", b"travel"])
    day = np.datetime64(f"{DT}T00:00:00", "s")
    pool: list[bytes] = []  # recent texts, so duplicates also cross file boundaries
    stats = {"docs": 0, "duplicates": 0, "short": 0, "bytes": 0, "files": 0}
    for file_no, start in enumerate(range(0, n, rows_per_file)):
        m = min(rows_per_file, n - start)
        texts: list[bytes] = []
        for sub in range(0, m, 5_000):  # bounded gather buffers
            texts.extend(generate_texts(rng, tokens, min(5_000, m - sub)))
        dup = np.flatnonzero(rng.random(m) < dup_share)
        dup = dup[dup > 0] if not pool else dup
        for i, spaced in zip(dup.tolist(), (rng.random(len(dup)) < 0.5).tolist(), strict=True):
            j = int(rng.integers(0, i + len(pool)))
            text = pool[j] if j < len(pool) else texts[j - len(pool)]
            # Half are byte copies; half differ only in whitespace, i.e. equal after normalization.
            texts[i] = text.replace(b" ", b"  ", 1) + b" " if spaced else text
        short = np.flatnonzero(rng.random(m) < short_share)
        for i in short.tolist():
            texts[i] = b" ".join(texts[i].split(b" ")[:3])  # well under normalize.min_chars
        stamps = np.datetime_as_string(day + rng.integers(0, 86_400, size=m), unit="s")
        dom = domains[rng.integers(0, len(domains), size=m)]
        lines = [
            b'{"id":"d%09d","text":"%s","created_at":"%sZ","domain":"%s","url":"https://example.org/%s/%d"}\n'
            % (start + i, text, stamp.encode(), d, d, start + i)
            for i, (text, stamp, d) in enumerate(zip(texts, stamps, dom, strict=True))
        ]
        data = b"".join(lines)
        (out / f"part-{file_no:05d}.jsonl").write_bytes(data)
        pool = texts[-2_000:]
        stats["docs"] += m
        stats["duplicates"] += len(dup)
        stats["short"] += len(short)
        stats["bytes"] += len(data)
        stats["files"] += 1
    return stats


# --------------------------------------------------------------------------------------------------------------
# One N in a fresh process
# --------------------------------------------------------------------------------------------------------------


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) so each stage's own peak can be read; Linux only."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _vm_hwm_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _maxrss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def run_stages(root: Path, batch_size: int | None, workers: int | None, profile: bool) -> dict:
    """Run the four stages on ``root`` in this process; return per-stage measurements."""
    import cProfile
    import pstats

    import dctp_tasks
    from dctp_tasks.config import load_config
    from dctp_tasks.dedup.exact import dedup_exact_day
    from dctp_tasks.export import Staged, committed_ledger, export_day
    from dctp_tasks.ingest import ingest_day
    from dctp_tasks.ledger import ledger_report
    from dctp_tasks.normalize import normalize_day
    from dctp_tasks.storage import Storage

    overrides = {"batch_size": batch_size, "normalize.workers": workers, "ingest.include_sources": [SOURCE]}
    config = load_config(overrides=overrides)
    for source in config.ingest.sources.values():
        if source.postgres is not None:
            source.enabled = False
    storage = Storage(root.as_uri())
    stages = {
        "ingest": lambda: ingest_day(storage, config, DAG_ID, DT),
        "normalize": lambda: normalize_day(storage, config, DAG_ID, DT),
        "dedup_exact": lambda: dedup_exact_day(storage, config, DAG_ID, DT),
        "export": lambda: export_day(storage, config, DAG_ID, DT, run_id="bench", rows=Staged(DAG_ID, "dedup_exact"),
                                     ledger=[Staged(DAG_ID, s) for s in ("ingest", "normalize", "dedup_exact")],
                                     ingested=results["ingest"]["input_rows"]),
    }
    results: dict[str, dict] = {}
    for name, call in stages.items():
        resettable = _reset_peak()
        profiler = cProfile.Profile() if profile else None
        start = time.perf_counter()
        if profiler:
            result = profiler.runcall(call)
        else:
            result = call()
        seconds = time.perf_counter() - start
        if profiler:
            prof_dir = root / "profile"
            prof_dir.mkdir(exist_ok=True)
            profiler.dump_stats(prof_dir / f"{name}.pstats")
            with open(prof_dir / f"{name}.txt", "w") as handle:
                stats = pstats.Stats(profiler, stream=handle).strip_dirs()
                stats.sort_stats("tottime").print_stats(30)
                stats.sort_stats("cumulative").print_stats(40)
        results[name] = {
            "seconds": seconds,
            "stage_seconds": result.seconds,  # the stage's own Timer (excludes setup outside it)
            "input_rows": result.total,
            "kept": result.kept,
            "dropped": dict(result.dropped_by_reason),
            "rows_per_s": result.total / seconds if seconds else 0.0,
            "stage_peak_rss_mb": _vm_hwm_mb() if resettable else None,
            "maxrss_self_mb": _maxrss_mb(resource.RUSAGE_SELF),
            "maxrss_children_mb": _maxrss_mb(resource.RUSAGE_CHILDREN),
        }
    _, rejects = committed_ledger(storage, "curated", DT)
    report = ledger_report(rejects, DT, results["ingest"]["input_rows"], results["export"]["kept"])
    return {"stages": results, "ledger": report.as_dict(), "config_batch_size": config.batch_size,
            "library": str(Path(dctp_tasks.__file__).parent),
            "normalize_workers": config.normalize.workers or os.cpu_count()}


def _child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    out = run_stages(args.root, args.batch_size, args.workers, args.profile)
    out["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    # clear_refs resets the kernel's high-water mark (and with it ru_maxrss) before each stage, so the process's
    # peak is the largest of the stages' own peaks.
    stage_peaks = [s["stage_peak_rss_mb"] or 0 for s in out["stages"].values()]
    out["peak_rss_main_mb"] = max([_maxrss_mb(resource.RUSAGE_SELF), *stage_peaks])
    out["peak_rss_workers_mb"] = _maxrss_mb(resource.RUSAGE_CHILDREN)
    print("BENCH_RESULT " + json.dumps(out))
    return 0


# --------------------------------------------------------------------------------------------------------------
# Driver and report
# --------------------------------------------------------------------------------------------------------------


def bench_one(workdir: Path, n: int, args: argparse.Namespace) -> dict:
    root = (workdir / f"n{n}").resolve()
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    generated = generate_landing(root, n, args.seed, args.rows_per_file)
    gen_seconds = time.perf_counter() - start
    print(f"[n={n:,}] generated {generated['files']} files, {generated['bytes'] / 1e6:,.0f} MB "
          f"in {gen_seconds:.1f}s; running the stages in a fresh process", flush=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "_child", str(root)]
    for flag, value in (("--batch-size", args.batch_size), ("--workers", args.workers)):
        if value is not None:
            cmd += [flag, str(value)]
    if args.profile:
        cmd.append("--profile")
    # An explicit PYTHONPATH comes first, so a scratch copy of the library can be measured against this one.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO)]))}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise RuntimeError(f"benchmark child for n={n} failed with exit code {proc.returncode}")
    out = json.loads(lines[-1].removeprefix("BENCH_RESULT "))
    stages = out["stages"]
    spine = sum(stages[s]["seconds"] for s in ("ingest", "dedup_exact", "export"))
    out.update(
        n=n, seed=args.seed, generated=generated, generate_seconds=gen_seconds,
        spine_seconds=spine, spine_rows_per_s=n / spine if spine else 0.0,
        landing_mb=generated["bytes"] / 1e6, finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    if not args.keep_data:
        shutil.rmtree(root, ignore_errors=True)
    return out


def _fmt(value: float | None, unit: str = "") -> str:
    return "–" if value is None else f"{value:,.0f}{unit}"


def render(runs: list[dict], meta: dict) -> str:
    """Return the Markdown report: the summary table, per-stage details and the targets."""
    lines = ["# DCTP spine benchmark", "",
             f"{meta['machine']}; Python {meta['python']}; batch_size {runs[0]['config_batch_size']}, "
             f"normalize workers {runs[0]['normalize_workers']}; ≈1 KB docs, 5 % duplicates, 10 % non-ASCII.", "",
             "| N | ingest rows/s | normalize rows/s | dedup_exact rows/s | export rows/s "
             "| ingest+dedup+export rows/s | peak RSS main | peak RSS workers |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        s = run["stages"]
        lines.append(
            f"| {run['n']:,} | {_fmt(s['ingest']['rows_per_s'])} | {_fmt(s['normalize']['rows_per_s'])} "
            f"| {_fmt(s['dedup_exact']['rows_per_s'])} | {_fmt(s['export']['rows_per_s'])} "
            f"| {_fmt(run['spine_rows_per_s'])} | {_fmt(run['peak_rss_main_mb'], ' MB')} "
            f"| {_fmt(run['peak_rss_workers_mb'], ' MB')} |")
    lines += ["", "Per stage: wall seconds, µs per input row, and the stage's own peak RSS (main process).", "",
              "| N | stage | seconds | µs/row | rows in | kept | stage peak RSS |",
              "|---:|---|---:|---:|---:|---:|---:|"]
    for run in runs:
        for name, s in run["stages"].items():
            per_row = 1e6 * s["seconds"] / s["input_rows"] if s["input_rows"] else 0.0
            lines.append(f"| {run['n']:,} | {name} | {s['seconds']:.2f} | {per_row:.1f} | {s['input_rows']:,} "
                         f"| {s['kept']:,} | {_fmt(s['stage_peak_rss_mb'], ' MB')} |")
    lines += ["", "Targets: ingest+dedup+export ≥ 20,000 rows/s; normalize ≥ 5,000 rows/s; "
              "peak RSS < 2 GB at 1M; cost linear in N.", ""]
    for run in runs:
        s = run["stages"]
        peak = max(run["peak_rss_main_mb"], run["peak_rss_workers_mb"])
        checks = [
            ("spine", run["spine_rows_per_s"] >= TARGET_SPINE_ROWS_S),
            ("normalize", s["normalize"]["rows_per_s"] >= TARGET_NORMALIZE_ROWS_S),
            ("RSS", peak < TARGET_PEAK_RSS_MB),
            ("ledger", run["ledger"]["balanced"]),
        ]
        load = run.get("load_avg_1m") or ["?", "?"]
        lines.append(f"- N={run['n']:,}: " + ", ".join(f"{k} {'ok' if ok else 'MISS'}" for k, ok in checks)
                     + f" (library {run.get('library', '?')}; 1-min load {load[0]} → {load[1]})")
    if len(runs) > 1:
        small, big = runs[-2], runs[-1]  # the two largest: fixed costs (model load, pool start) fade out

        def per_row(run: dict, name: str) -> float:
            return run["stages"][name]["seconds"] / run["n"]

        ratios = ", ".join(f"{name} ×{per_row(big, name) / per_row(small, name):.2f}" for name in small["stages"])
        lines.append(f"- cost per row at N={big['n']:,} relative to N={small['n']:,} (1.00 = linear): {ratios}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        return _child_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rows-per-file", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, help="override config batch_size")
    parser.add_argument("--workers", type=int, help="override normalize.workers (1: in-process, for profiling)")
    parser.add_argument("--profile", action="store_true", help="cProfile each stage into {workdir}/n{N}/profile/")
    parser.add_argument("--keep-data", action="store_true", help="keep each N's data root (default: delete)")
    parser.add_argument("--fresh", action="store_true", help="discard earlier results in results.json")
    args = parser.parse_args(argv)
    if args.profile:
        args.keep_data = True
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    results_path = workdir / "results.json"
    previous = {} if args.fresh or not results_path.exists() else json.loads(results_path.read_text())
    runs = {run["n"]: run for run in previous.get("runs", [])}
    for n in args.sizes:
        run = bench_one(workdir, n, args)
        runs[n] = run
        s = run["stages"]
        print(f"[n={n:,}] " + ", ".join(f"{k} {v['seconds']:.1f}s" for k, v in s.items())
              + f"; spine {run['spine_rows_per_s']:,.0f} rows/s; peak RSS main {run['peak_rss_main_mb']:,.0f} MB, "
              f"workers {run['peak_rss_workers_mb']:,.0f} MB", flush=True)
    meta = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "python": platform.python_version()}
    ordered = [runs[n] for n in sorted(runs)]
    results_path.write_text(json.dumps({"meta": meta, "runs": ordered}, indent=2))
    report = render(ordered, meta)
    (workdir / "results.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
