"""The feedback store from a shell: ``dctp db upgrade``, ``dctp queue``, ``dctp annotate``, ``dctp feedback``.

The store is ``--store URL``, else ``$DCTP_FEEDBACK_URL``, else the Airflow connection ``dctp_feedback`` given as
``$AIRFLOW_CONN_DCTP_FEEDBACK``, else ``sqlite:///$AIRFLOW_HOME/dctp_feedback.db``. The DAG's tasks read the
connection first (from any secrets backend): where it lives only in a secrets backend, pass ``--store``.
The roster and categories come from the config file (``annotation``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dctp_tasks.config import load_config
from dctp_tasks.feedback import db
from dctp_tasks.feedback.store import LABELS, FeedbackStore, QueueItem
from dctp_tasks.storage import Storage, check_date

EXPORT_COLUMNS = ("doc_id", "expert", "label", "category", "rationale", "created_at")
TRAIL_COLUMNS = ("annotation_id", "retracts", "client")
_KEYS = {"g": "good", "b": "bad", "s": "skip"}
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``db``, ``queue``, ``annotate`` and ``feedback`` on the ``dctp`` command's subparsers."""
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("--store", default=None, metavar="URL",
                       help="feedback store SQLAlchemy URL (default: $DCTP_FEEDBACK_URL, the dctp_feedback "
                            "connection in $AIRFLOW_CONN_DCTP_FEEDBACK, else SQLite under $AIRFLOW_HOME)")
    dbp = sub.add_parser("db", help="the feedback store's schema")
    dbp.add_argument("action", choices=["upgrade"], help="upgrade: apply the migrations the store lacks")
    dbp.add_argument("--store", default=None, metavar="URL", help=store._actions[0].help)
    queue = sub.add_parser("queue", parents=[store], help="documents waiting for judgement, per expert and stratum")
    queue.add_argument("--expert", default=None, help="only this expert's queue")
    queue.add_argument("--date", dest="date", default=None, help="only the batch of this date (YYYY-MM-DD)")
    annotate = sub.add_parser("annotate", parents=[store],
                              help="judge your queue in the terminal: g(ood) / b(ad) / s(kip), u(ndo), q(uit)")
    annotate.add_argument("--expert", required=True, help="your name on the roster (annotation.experts)")
    annotate.add_argument("--date", dest="date", default=None, help="only the batch of this date")
    annotate.add_argument("--max-chars", type=int, default=3000, help="characters of each text shown (default 3000)")
    feedback = sub.add_parser("feedback", help="move judgements in and out of the store (CSV or Parquet)")
    actions = feedback.add_subparsers(dest="action", required=True)
    imp = actions.add_parser("import", parents=[store], help="import judgements made in another tool: doc_id, expert, "
                                                             "label[, category, rationale, created_at]")
    imp.add_argument("file", help=".csv or .parquet")
    exp = actions.add_parser("export", parents=[store], help="write each expert's effective judgement per document")
    exp.add_argument("file", help=".csv or .parquet")
    exp.add_argument("--trail", action="store_true", help="every row of the audit trail, retractions included")
    stats = actions.add_parser("stats", parents=[store], help="consensus, agreement (Krippendorff's alpha, Cohen's "
                                                              "kappa) and expert reliability of a merge run")
    stats.add_argument("--merge", type=int, default=None, metavar="ID", help="merge run id (default: the latest)")
    weights = sub.add_parser("weights", help="the sampling weights a table version carries, per source and domain")
    weights.add_argument("--version", type=int, default=None, help="table version (default: the latest)")


def open_store(args: argparse.Namespace) -> FeedbackStore:
    return FeedbackStore.open(args.store or None, load_config().annotation)


def db_command(storage: Storage, dataset: str, args: argparse.Namespace) -> dict:
    engine = db.create_feedback_engine(args.store or db.feedback_url())
    try:
        applied = db.upgrade(engine)
        return {"store": engine.url.render_as_string(hide_password=True), "applied": applied,
                "schema_version": db.applied_versions(engine)[-1]}
    finally:
        engine.dispose()


def queue_command(storage: Storage, dataset: str, args: argparse.Namespace) -> dict:
    if args.date is not None:
        check_date(args.date, "--date")
    store = open_store(args)
    rows = store.queue_summary(expert=args.expert, dt=args.date)
    return {"rows": rows, "counts": store.counts(args.date)}


def annotate_command(storage: Storage, dataset: str, args: argparse.Namespace) -> dict:
    if args.date is not None:
        check_date(args.date, "--date")
    store = open_store(args)
    return annotate_loop(store, args.expert, sys.stdin, sys.stdout, dt=args.date, max_chars=args.max_chars)


def feedback_command(storage: Storage, dataset: str, args: argparse.Namespace) -> dict:
    store = open_store(args)
    if args.action == "stats":
        return stats_command(store, args.merge)
    path = Path(args.file)
    if path.suffix not in (".csv", ".parquet"):
        raise ValueError(f"{path}: the format comes from the extension; use .csv or .parquet")
    if args.action == "import":
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        table = pq.read_table(path) if path.suffix == ".parquet" else pacsv.read_csv(
            path, parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(EXPORT_COLUMNS, pa.string())))
        missing = [c for c in ("doc_id", "expert", "label") if c not in table.column_names]
        if missing:
            raise ValueError(f"{path} has no column {missing[0]!r}; its columns are {table.column_names}")
        client = ("import:" + re.sub(r"[^A-Za-z0-9_.-]+", "_", path.name))[:64]
        return {"file": str(path), **store.import_judgements(table.to_pylist(), client=client)}
    rows = store.export_judgements(trail=args.trail)
    columns = list(rows[0]) if rows else [*EXPORT_COLUMNS, *(TRAIL_COLUMNS if args.trail else ())]
    table = pa.Table.from_pylist(rows, schema=pa.schema(
        [(c, pa.timestamp("us", tz="UTC") if c == "created_at" else pa.int64()
          if c in ("annotation_id", "retracts") else pa.string()) for c in columns]))
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    else:
        pacsv.write_csv(table, path)
    return {"file": str(path), "rows": table.num_rows}


def annotate_loop(store: FeedbackStore, expert: str, stdin: TextIO, stdout: TextIO, *, dt: str | None = None,
                  max_chars: int = 3000) -> dict:
    """Show the expert's next item, read a judgement, store it through the API; until the queue is empty or ``q``.

    A line is ``g``, ``b`` or ``s``, optionally ``#category`` and a rationale (``b #toxic insults a user``); ``u``
    takes back the last judgement, ``q`` (or end of input) stops.
    """
    store.expert(expert)
    counts = {label: 0 for label in LABELS} | {"undone": 0}
    out: Callable[[str], None] = lambda text: print(text, file=stdout, flush=True)  # noqa: E731
    categories = ", ".join(store.config.categories)
    while True:
        queue = store.open_queue(expert, limit=1, dt=dt)
        if not queue:
            out(f"{expert}: nothing left to judge" + (f" for {dt}" if dt else "") + ".")
            break
        item = queue[0]
        out(render_item(item, store.open_count(expert, dt=dt), max_chars))
        while True:
            stdout.write(f"[g]ood [b]ad [s]kip (+ #category: {categories}; + rationale), [u]ndo, [q]uit > ")
            stdout.flush()
            line = stdin.readline()
            if not line:
                return _finish(out, counts)
            answer = line.strip()
            key, _, rest = answer.partition(" ")
            if key == "q":
                return _finish(out, counts)
            if key == "u":
                undone = store.retract_last(expert, client="cli")
                out(f"undone: judgement {undone.retracts}" if undone else "nothing to undo")
                counts["undone"] += bool(undone)
                break
            if key not in _KEYS:
                out("answer g, b or s (optionally #category and a rationale), u or q")
                continue
            category, rationale = None, rest.strip()
            if rationale.startswith("#"):
                category, _, rationale = rationale[1:].partition(" ")
            try:
                store.submit(expert, item.item_id, _KEYS[key], category=category or None,
                             rationale=rationale or None, client="cli")
            except ValueError as exc:
                out(f"not stored: {exc}")
                continue
            counts[_KEYS[key]] += 1
            break
    return _finish(out, counts)


def render_item(item: QueueItem, left: int, max_chars: int) -> str:
    """Return the item as the terminal shows it; the document's text is shown inert (no control sequences)."""
    why = f"{item.strategy}" + (f" {item.strategy_score:.3f}" if item.strategy_score is not None else "")
    quality = f"{item.quality:.2f}" if item.quality is not None else "-"
    lines = ["", "=" * 80,
             f"{safe(item.doc_id)}  dt={item.dt}  domain={safe(item.domain or '-')}  source={safe(item.source or '-')}"
             f"  ({left} left)",
             f"picked by {why} in stratum {safe(item.stratum)}; quality {quality} ({item.verdict or '-'})"
             + (f"; FILTERED by {safe(item.filter_reason or '?')} {safe(item.filter_detail or '')}"
                if item.pool == "filtered" else ""), "-" * 80]
    if item.prompt or item.response:
        lines += ["PROMPT:", _clip(safe(item.prompt or ""), max_chars), "RESPONSE:",
                  _clip(safe(item.response or ""), max_chars)]
    else:
        lines.append(_clip(safe(item.text), max_chars))
    lines.append("-" * 80)
    return "\n".join(lines)


def safe(text: str) -> str:
    """Make untrusted text inert on a terminal: control characters (ANSI escapes, bidi overrides) become visible."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def render_queue(out: dict) -> str:
    lines = [f"{'expert':<20} {'stratum':<32} {'assigned':>8} {'done':>6} {'open':>6}  next due"]
    for row in out["rows"]:
        due = row["next_due"].strftime("%Y-%m-%d") if row["next_due"] else "-"
        lines.append(f"{safe(row['expert']):<20} {safe(row['stratum'])[:32]:<32} {row['assigned']:>8} "
                     f"{row['done']:>6} {row['open']:>6}  {due}")
    c = out["counts"]
    lines.append(f"{c['items']} documents queued, {c['assignments']} assignments: {c['done']} done, {c['open']} open; "
                 + ", ".join(f"{k} {v}" for k, v in c["labels"].items()))
    return "\n".join(lines)


def _finish(out: Callable[[str], None], counts: dict) -> dict:
    out("judged: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f" … [{len(text) - limit} more characters]"


def stats_command(store: FeedbackStore, merge_id: int | None) -> dict:
    """Return a merge run's consensus counts, agreement and expert reliability, with its text rendering."""
    from dctp_tasks.feedback.consensus_db import merge_run

    run = merge_run(store, merge_id)
    if run is None:
        raise ValueError("no merge run " + (str(merge_id) if merge_id is not None else "yet: judgements are merged "
                                                                                   "by dctp_daily's merge_feedback "
                                                                                   "or dctp_feedback_apply"))
    s = run["stats"]
    floor = load_config().feedback.reliability_floor
    lines = [f"merge run {run['merge_id']} ({run['dag_id']} {safe(run['run_id'] or '')}, "
             f"{run['created_at']:%Y-%m-%d %H:%M} UTC, {run['method']}): {run['judgements']:,} judgements on "
             f"{run['documents']:,} documents; {s.get('good', 0):,} good, {s.get('bad', 0):,} bad, "
             f"{s.get('needs_review', 0):,} need review"
             + (f"; in table version {run['table_version']}" if run["table_version"] is not None else ""),
             f"Krippendorff's alpha {_num(s.get('alpha'))} overall"
             + (f", {_num(s.get('alpha_batch'))} on dt={run['dt']}'s batch" if run["dt"] else ""), "",
             f"{'expert':<24} {'judgements':>10} {'reliability':>11} {'agreement':>9} {'weight':>6}"]
    for e in run["experts"]:
        lines.append(f"{safe(e['expert']):<24} {e['judgements']:>10} {_num(e['reliability']):>11} "
                     f"{_num(e['agreement']):>9} {e['weight']:>6.2f}"
                     + (f"  FLAGGED: reliability below {floor:.2f}" if e["flagged"] else ""))
    if s.get("kappa"):
        lines += ["", f"{'expert pair':<40} {'kappa':>7} {'shared':>7}"]
        lines += [f"{safe(pair.replace('|', ' / ')):<40} {_num(k['kappa']):>7} {k['items']:>7}"
                  for pair, k in s["kappa"].items()]
    return {**run, "text": "\n".join(lines)}


def weights_command(storage: Storage, dataset: str, args: argparse.Namespace) -> dict:
    """Return the sampling weights table version ``--version`` carries: those of the latest export at or before it."""
    from dctp_tasks.export import METADATA_PREFIX, open_table
    from dctp_tasks.export.delta import commit_info, dataset_dir

    version = open_table(storage, dataset, args.version).version()
    for v in range(version, -1, -1):
        info = commit_info(storage, dataset_dir(dataset), v) or {}
        raw = info.get(f"{METADATA_PREFIX}sampling_weights")
        if raw:
            weights = json.loads(raw)
            break
    else:
        raise ValueError(f"version {version} of {dataset!r} carries no sampling weights: no export up to it merged "
                         "feedback (feedback.enabled false, or exported before merging existed)")
    lines = [f"version {version}: sampling weights of the export in version {v} (merge run "
             f"{info.get(f'{METADATA_PREFIX}merge_id', '?')}); prior share judged good "
             f"{weights.get('prior_share', float('nan')):.3f}",
             f"{'group':<40} {'good':>6} {'bad':>6} {'share':>7} {'weight':>7}"]
    for kind in ("source", "domain"):
        for key, w in sorted(weights.get(kind, {}).items()):
            lines.append(f"{kind + ' ' + safe(key or '(none)'):<40} {w['good']:>6} {w['bad']:>6} {w['share']:>7.3f} "
                         f"{w['weight']:>7.3f}")
    if len(lines) == 2:
        lines.append("(no judged documents yet: every source and domain weighs 1)")
    return {"version": version, "weights_version": v, "weights": weights, "text": "\n".join(lines)}


def _num(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"
