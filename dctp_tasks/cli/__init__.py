"""``dctp``: look at what the pipeline exported — versions, contents, files, diffs, each date's ledger and score report
— re-decide a date with new quality thresholds, train a classifier scorer, score any file, check that runs can start
(``dctp doctor``), and work with the feedback store: its schema (``dctp db upgrade``), the queue, judging in the
terminal (``dctp annotate``), importing and exporting judgements, and comparing active-learning strategies offline
(``dctp al-simulate``); and write a version as training files (``dctp materialize``), print its dataset card (``dctp
card``) and validate it (``dctp validate``).

The data root comes from ``--root`` or ``$DCTP_DATA_ROOT`` (default ``$AIRFLOW_HOME/dctp-data``); S3 roots use the
AWS environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, …).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy.exc import OperationalError

from dctp_tasks.cli import feedback as feedback_cli
from dctp_tasks.cli.al_simulate import add_parser as add_al_simulate_parser
from dctp_tasks.cli.al_simulate import al_simulate
from dctp_tasks.cli.doctor import add_parser as add_doctor_parser
from dctp_tasks.cli.doctor import doctor
from dctp_tasks.cli.score import add_parser as add_score_parser
from dctp_tasks.cli.score import score_file
from dctp_tasks.cli.views import add_parser as add_views_parser
from dctp_tasks.cli.views import (
    card_command,
    materialize_command,
    render_materialized,
    render_validation,
    validate_command,
)
from dctp_tasks.config import load_config
from dctp_tasks.export import METADATA_PREFIX, committed_ledger, open_table
from dctp_tasks.feedback.db import SchemaOutdated
from dctp_tasks.ledger import ledger_report
from dctp_tasks.staging import staged_rejects
from dctp_tasks.storage import Storage, check_date, check_name, data_root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dctp", description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=None, help="data root URI (default: $DCTP_DATA_ROOT)")
    parser.add_argument("--dataset", default=None, help="exported table name (default: export.dataset_name)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("versions", help="list the table's versions with their run metadata")
    show = sub.add_parser("show", help="rows of a version by split, source, domain and language")
    show.add_argument("version", type=int)
    files = sub.add_parser("files", help="the Parquet file URIs of a version (for Hugging Face datasets)")
    files.add_argument("version", type=int)
    diff = sub.add_parser("diff", help="doc_ids added and removed between two versions")
    diff.add_argument("v1", type=int)
    diff.add_argument("v2", type=int)
    diff.add_argument("--sample", type=int, default=5, help="doc_ids to show of each side")
    ledger = sub.add_parser("ledger", help="where every input row of a date ended up")
    ledger.add_argument("dt", help="partition date YYYY-MM-DD")
    ledger.add_argument("--rows", type=int, default=10, help="example rejects to show per reason")
    ledger.add_argument("--version", type=int, default=None,
                        help="the ledger of the date's latest commit up to this table version (default: latest)")
    ledger.add_argument("--dag-id", default="dctp_daily",
                        help="before the date's first export: whose staged drops to show")
    report = sub.add_parser("report", help="a date's quality score report (verdicts, rules, histograms by domain)")
    report.add_argument("dt", help="partition date YYYY-MM-DD")
    rescore = sub.add_parser("rescore", help="re-decide a date from its stored scores with new thresholds "
                                             "(no model runs)")
    rescore.add_argument("dt", help="partition date YYYY-MM-DD")
    rescore.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                         help="a rule threshold (toxicity.toxic=0.9), per domain (news:heuristics.too_few_words=30), "
                              "off (perplexity.perplexity_too_high=off), or min_quality / review_below; repeatable")
    rescore.add_argument("--export", action="store_true",
                         help="commit the new decision as a new Delta version and check the ledger")
    train = sub.add_parser("train-scorer", help="train a classifier scorer on a labeled table (text,label)")
    train.add_argument("name", help="scorer name: enable it with quality.classifiers.NAME")
    train.add_argument("--data", required=True, help="CSV or Parquet file with a text and a label column")
    train.add_argument("--text-column", default="text")
    train.add_argument("--label-column", default="label")
    train.add_argument("--positive-label", default=None, help="the label value that means positive (default: 1/true)")
    add_score_parser(sub)
    add_doctor_parser(sub)
    feedback_cli.add_parsers(sub)
    add_al_simulate_parser(sub)
    add_views_parser(sub)
    args = parser.parse_args(argv)

    if args.command == "doctor":  # it checks the data root and the config itself, failures included
        code, checks, text = doctor(args.root, args)
        try:
            print(json.dumps(checks, indent=2) if args.json else text)
        except BrokenPipeError:  # piped into head: the reader has what it wanted
            sys.stderr.close()
        return code
    root = args.root or data_root()
    try:
        storage = Storage(root)
        dataset = check_name(args.dataset or load_config().export.dataset_name, "--dataset")
        if getattr(args, "dt", None) is not None:
            check_date(args.dt)
        if getattr(args, "dag_id", None) is not None:
            check_name(args.dag_id, "--dag-id")
        out = COMMANDS[args.command](storage, dataset, args)
    except (FileNotFoundError, ValueError, SchemaOutdated) as exc:
        print(f"dctp: {exc}", file=sys.stderr)
        return 2
    except OperationalError as exc:
        print(f"dctp: cannot reach the feedback store: {str(exc.orig).strip()}", file=sys.stderr)
        return 2
    except Exception as exc:  # deltalake raises its own TableNotFoundError etc.
        if type(exc).__name__ in {"TableNotFoundError", "DeltaError"}:
            print(f"dctp: no exported table {dataset!r} under {storage.root}: {exc}", file=sys.stderr)
            return 2
        raise
    try:
        print(json.dumps(out, indent=2, default=str) if args.json else _render(args.command, out))
    except BrokenPipeError:  # piped into head: the reader has what it wanted
        sys.stderr.close()
    return 1 if args.command == "validate" and not out["ok"] else 0


def versions(storage: Storage, dataset: str, args) -> list[dict]:
    history = open_table(storage, dataset).history()
    rows = []
    for commit in sorted(history, key=lambda c: c["version"]):
        meta = {k.removeprefix(METADATA_PREFIX): v for k, v in commit.items() if k.startswith(METADATA_PREFIX)}
        # a retraction changes several dates: it shows them, and the rows it removed as a negative count
        dates = json.loads(meta["dates"]) if meta.get("dates") else {}
        rows.append({
            "version": commit["version"],
            "committed": datetime.fromtimestamp(commit["timestamp"] / 1000, UTC).isoformat(timespec="seconds"),
            "operation": "retract" if dates else commit.get("operation"),
            "dt": meta.get("dt") or ",".join(sorted(dates)) or None,
            "rows": meta.get("exported") or (f"-{sum(d['retracted'] for d in dates.values())}" if dates else None),
            "synthetic": int(meta["synthetic_rows"]) if meta.get("synthetic_rows") else None,
            "synthetic_rejected": json.loads(meta["synthetic_rejected"]) if meta.get("synthetic_rejected") else {},
            "run_id": meta.get("run_id"),
            "mlflow_run_id": meta.get("mlflow_run_id"),
        })
    return rows


def show(storage: Storage, dataset: str, args) -> dict:
    delta = open_table(storage, dataset, args.version)
    names = delta.schema().to_arrow().names
    table = delta.to_pyarrow_dataset().to_table(
        columns=[c for c in ("dt", "split", "source", "domain", "lang", "synthetic") if c in names])
    out: dict = {"version": args.version, "rows": table.num_rows}
    for column in ("dt", "split", "source", "domain", "lang"):
        counts = table.group_by(column).aggregate([([], "count_all")]).sort_by([("count_all", "descending"),
                                                                                (column, "ascending")])
        out[f"by_{column}"] = {str(r[column]): r["count_all"] for r in counts.to_pylist()}
    synthetic = table.filter(pc.fill_null(table.column("synthetic"), False)) if "synthetic" in names \
        else table.slice(0, 0)
    out["synthetic"] = synthetic.num_rows
    counts = synthetic.group_by("domain").aggregate([([], "count_all")]).sort_by([("count_all", "descending")])
    out["synthetic_by_domain"] = {str(r["domain"]): r["count_all"] for r in counts.to_pylist()}
    out["synthetic_rejected"] = _synthetic_rejected(storage, dataset, sorted(out["by_dt"]), args.version)
    return out


def _synthetic_rejected(storage: Storage, dataset: str, dates: list[str], version: int | None) -> dict[str, int]:
    """Sum, over the dates of a version, the synthetic rows their latest commits rejected, by reason."""
    from dctp_tasks.export import latest_commit

    total: dict[str, int] = {}
    for dt in dates:
        commit = latest_commit(storage, dataset, dt, version) or {}
        for reason, count in json.loads(commit.get(f"{METADATA_PREFIX}synthetic_rejected") or "{}").items():
            total[reason] = total.get(reason, 0) + int(count)
    return dict(sorted(total.items(), key=lambda kv: (-kv[1], kv[0])))


def files(storage: Storage, dataset: str, args) -> list[str]:
    return sorted(open_table(storage, dataset, args.version).file_uris())


def diff(storage: Storage, dataset: str, args) -> dict:
    old = _doc_ids(storage, dataset, args.v1)
    new = _doc_ids(storage, dataset, args.v2)
    added = pc.filter(new, pc.invert(pc.is_in(new, value_set=old)))
    removed = pc.filter(old, pc.invert(pc.is_in(old, value_set=new)))
    added_ids = pc.take(added, pc.sort_indices(added))  # sorted, so the samples are stable
    removed_ids = pc.take(removed, pc.sort_indices(removed))
    return {"from": args.v1, "to": args.v2, "added": len(added_ids), "removed": len(removed_ids),
            "unchanged": len(new) - len(added_ids),
            "added_sample": added_ids.slice(0, args.sample).to_pylist(),
            "removed_sample": removed_ids.slice(0, args.sample).to_pylist()}


def ledger(storage: Storage, dataset: str, args) -> dict:
    try:
        latest, rejects = committed_ledger(storage, dataset, args.dt, args.version)
    except FileNotFoundError:
        if args.version is not None:
            raise
        latest, rejects = {}, staged_rejects(storage, args.dag_id, args.dt)
    ingested = int(latest.get(f"{METADATA_PREFIX}ingested", 0))
    exported = int(latest.get(f"{METADATA_PREFIX}exported", 0))
    report = ledger_report(rejects, args.dt, ingested, exported, int(latest.get(f"{METADATA_PREFIX}synthesized") or 0))
    examples: dict[str, list[dict]] = {}
    for row in rejects.sort_by([("outcome", "ascending"), ("reason", "ascending"), ("file", "ascending"),
                                ("line", "ascending"), ("doc_id", "ascending")]).to_pylist():
        bucket = examples.setdefault(f"{row['outcome']}.{row['reason']}", [])
        if len(bucket) < args.rows:
            bucket.append({k: row[k] for k in ("doc_id", "detail", "duplicate_of", "file", "line") if row[k]})
    text = report.render()
    if not latest:
        text += (f"\n  (no export of dt={args.dt} yet: the ingested count is unknown; shown are the rows the current "
                 f"stages of {args.dag_id} dropped)")
    return {**report.as_dict(), "version": latest.get("version"), "examples": examples, "text": text}


def report(storage: Storage, dataset: str, args) -> dict:
    from dctp_tasks.quality.report import report_path

    path = report_path(args.dt)
    if not storage.exists(path):
        raise FileNotFoundError(f"no score report for dt={args.dt} under {storage.root} (quality not decided yet)")
    return {"dt": args.dt, "path": storage.uri(path), "text": storage.read_bytes(storage.path(path)).decode()}


RESCORE_DAG_ID = "dctp_rescore"
"""Whose staging re-decisions are published under (the ``dctp_rescore`` DAG's), never the scoring DAG's own."""


def rescore(storage: Storage, dataset: str, args) -> dict:
    """Re-run only the decide step of a date: stored scores, new thresholds; optionally commit and check the ledger."""
    from dctp_tasks.export import Staged, export_day, rescore_basis, rows_for_dt
    from dctp_tasks.ledger import check_ledger
    from dctp_tasks.quality.decide import STAGE, decide_day

    overrides = quality_overrides(args.settings)
    config = load_config(overrides=overrides)
    basis = rescore_basis(storage, dataset, args.dt)
    scores = basis["scores"]
    result = decide_day(storage, config, RESCORE_DAG_ID, args.dt, source_dag_id=scores["dag_id"],
                        input_stage=scores["stage"], input_version=scores["version"])
    out = {"dt": args.dt, "settings": overrides, **result.as_dict(),
           "text": storage.read_bytes(storage.path(str(result.extra["report"]))).decode()}
    if args.export:
        from dctp_tasks.feedback import db
        from dctp_tasks.feedback.merge import merge_feedback_day
        from dctp_tasks.feedback.store import FeedbackStore
        from dctp_tasks.synthetic.stage import commit_metadata, redecide_synthetic_day

        ingested = basis["ingested"]
        decided = Staged(RESCORE_DAG_ID, STAGE, result.version)
        run_id = "rescore__" + datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
        store = FeedbackStore.open(None, config.annotation, upgrade=True)  # as a run's feedback_db task would
        try:
            # as the dctp_rescore DAG: the experts' consensus applies (documents judged bad stay out), and the commit
            # takes the table's writer lock
            merged = merge_feedback_day(storage, config, RESCORE_DAG_ID, args.dt, store=store, input_stage=STAGE,
                                        input_version=result.version, run_id=run_id, learn=False)
            rows = Staged(RESCORE_DAG_ID, merged.output_stage or merged.stage, merged.version)
            ledger = [decided] + ([rows] if rows.stage == merged.stage else [])
            # the synthetic rows the daily run generated, re-decided with these thresholds (no model call)
            synthetic = redecide_synthetic_day(storage, config, RESCORE_DAG_ID, args.dt, input_stage=rows.stage,
                                               input_version=rows.version,
                                               candidates_dag_id=basis["synthetic"]["dag_id"] or "",
                                               candidates_version=basis["synthetic"]["version"])
            synthesized = 0
            if synthetic.output_stage is None:  # it published: its rows are the day's, its drops join the ledger
                rows = Staged(RESCORE_DAG_ID, synthetic.stage, synthetic.version)
                ledger.append(rows)
                synthesized = int(synthetic.extra["generated"])
            with db.table_lock(store.engine, dataset):
                exported = export_day(storage, config, RESCORE_DAG_ID, args.dt, run_id=run_id, rows=rows,
                                      ledger=ledger, ingested=ingested, synthesized=synthesized,
                                      amend=basis["commit_token"],
                                      metadata={"rescored_with": json.dumps(overrides, sort_keys=True),
                                                "rescored_version": basis["version"],
                                                **commit_metadata(RESCORE_DAG_ID, synthetic.as_dict()),
                                                **{f"scores_{k}": v for k, v in scores.items()}})
        finally:
            store.engine.dispose()
        version = int(exported.extra["table_version"])
        _, rejects = committed_ledger(storage, dataset, args.dt, version)
        ledger_ = check_ledger(ledger_report(rejects, args.dt, ingested, rows_for_dt(open_table(storage, dataset,
                                                                                                 version), args.dt),
                                             synthesized))
        out.update(table_version=version, ledger=ledger_.render())
    return out


def quality_overrides(settings: list[str]) -> dict:
    """Turn ``--set`` items into config overrides: rule thresholds (global or per ``domain:``), min/review bounds."""
    thresholds: dict = {}
    by_domain: dict[str, dict] = {}
    overrides: dict = {}
    for item in settings:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. toxicity.toxic=0.9")
        value = None if raw.strip().lower() in {"off", "none", "null"} else float(raw)
        if key in {"min_quality", "review_below"}:
            overrides[f"quality.{key}"] = value
        elif ":" in key:
            domain, _, rule = key.partition(":")
            by_domain.setdefault(domain, {})[rule] = value
        else:
            thresholds[key] = value
    base = load_config().quality
    if thresholds:
        overrides["quality.thresholds"] = {**base.thresholds, **thresholds}
    if by_domain:
        merged = {d: dict(t) for d, t in base.domain_thresholds.items()}
        for domain, rules in by_domain.items():
            merged.setdefault(domain, {}).update(rules)
        overrides["quality.domain_thresholds"] = merged
    return overrides


def train_scorer(storage: Storage, dataset: str, args) -> dict:
    from dctp_tasks.quality.classifier import train_classifier

    return train_classifier(storage, args.name, args.data, text_column=args.text_column,
                            label_column=args.label_column, positive_label=args.positive_label)


def _doc_ids(storage: Storage, dataset: str, version: int) -> pa.Array:
    table = open_table(storage, dataset, version).to_pyarrow_dataset().to_table(columns=["doc_id"])
    return table.column("doc_id").combine_chunks()


def _render(command: str, out) -> str:
    if command == "versions":
        header = (f"{'version':>7}  {'committed':<25} {'dt':<10} {'rows':>8} {'synthetic':>9}  {'run_id':<45} "
                  "mlflow_run_id")
        lines = [header]
        for r in out:
            synthetic = "-" if r["synthetic"] is None else f"{r['synthetic']:,}"
            lines.append(f"{r['version']:>7}  {r['committed']:<25} {r['dt'] or '-':<10} {r['rows'] or '-':>8} "
                         f"{synthetic:>9}  {r['run_id'] or '-':<45} {r['mlflow_run_id'] or '-'}"
                         + ("  (retraction)" if r["operation"] == "retract" else ""))
            if r["synthetic_rejected"]:
                lines.append(f"{'':>9}synthetic rejected: " + ", ".join(
                    f"{reason.removeprefix('synthetic_')} {count:,}" for reason, count in
                    sorted(r["synthetic_rejected"].items(), key=lambda kv: (-kv[1], kv[0]))))
        return "\n".join(lines)
    if command == "show":
        lines = [f"version {out['version']}: {out['rows']:,} rows"]
        for key in ("by_dt", "by_split", "by_source", "by_domain", "by_lang"):
            lines.append(f"  {key[3:]}:")
            lines += [f"    {name:<24} {count:>10,}  ({count / max(out['rows'], 1):.1%})"
                      for name, count in list(out[key].items())[:15]]
        lines.append(f"  synthetic: {out['synthetic']:,} rows ({out['synthetic'] / max(out['rows'], 1):.1%})"
                     + ("".join(f"\n    {name:<24} {count:>10,}" for name, count in
                                out["synthetic_by_domain"].items())))
        if out["synthetic_rejected"]:
            lines.append("  synthetic rows rejected (ledger reasons):")
            lines += [f"    {reason:<32} {count:>10,}" for reason, count in out["synthetic_rejected"].items()]
        return "\n".join(lines)
    if command == "files":
        return "\n".join(out)
    if command == "diff":
        return (f"v{out['from']} -> v{out['to']}: +{out['added']:,} added, -{out['removed']:,} removed, "
                f"{out['unchanged']:,} unchanged\n  added e.g.:   {', '.join(out['added_sample']) or '-'}\n"
                f"  removed e.g.: {', '.join(out['removed_sample']) or '-'}")
    if command == "report":
        return out["text"]
    if command == "rescore":
        lines = [out["text"]]
        if "table_version" in out:
            lines += [f"committed as version {out['table_version']}", out["ledger"]]
        else:
            lines.append(f"decided {out['total']:,} rows: {out['kept']:,} kept (not exported: pass --export to "
                         "commit a new version)")
        return "\n".join(lines)
    if command == "train-scorer":
        return json.dumps(out, indent=2, default=str)
    if command == "materialize":
        return render_materialized(out)
    if command == "card":
        return f"card of version {out['version']} written to {out['out']}" if out["out"] else out["text"]
    if command == "validate":
        return render_validation(out)
    if command in ("score", "al-simulate"):
        return out["summary"]
    if command == "queue":
        return feedback_cli.render_queue(out)
    if command == "db":
        return (f"feedback store {out['store']}: schema version {out['schema_version']}"
                + (f" (applied now: {', '.join(map(str, out['applied']))})" if out["applied"] else " (up to date)"))
    if command == "annotate":
        return ""
    if command in ("feedback", "weights") and "text" in out:
        return out["text"]
    if command == "ledger":
        lines = [out["text"], f"  (export version {out['version']})"]
        for reason, rows in out["examples"].items():
            lines.append(f"  {reason}:")
            lines += ["    " + ", ".join(f"{k}={v}" for k, v in row.items()) for row in rows]
        return "\n".join(lines)
    return json.dumps(out, indent=2, default=str)


COMMANDS = {"versions": versions, "show": show, "files": files, "diff": diff, "ledger": ledger, "report": report,
            "rescore": rescore, "train-scorer": train_scorer, "score": score_file, "db": feedback_cli.db_command,
            "queue": feedback_cli.queue_command, "annotate": feedback_cli.annotate_command,
            "feedback": feedback_cli.feedback_command, "weights": feedback_cli.weights_command,
            "al-simulate": al_simulate, "materialize": materialize_command,
            "card": card_command, "validate": validate_command}

