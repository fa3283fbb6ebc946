"""``dctp materialize VERSION --format F --out URI``: write a table version as sharded training files with a
manifest (and its dataset card, ``README.md``), to a local folder or ``s3://…``; ``dctp card VERSION`` prints a
version's dataset card; ``dctp validate VERSION`` runs the validation checks and can write the HTML report."""

from __future__ import annotations

import argparse
from pathlib import Path

from dctp_tasks.config import load_config
from dctp_tasks.export import open_table
from dctp_tasks.export.card import build_card
from dctp_tasks.export.formats import COMPRESSIONS, FORMATS, FormatOptions
from dctp_tasks.export.validate import render_html, validate_dataset
from dctp_tasks.export.views import DEFAULT_SHARD_ROWS, SPLITS, ViewSpec, materialize
from dctp_tasks.storage import Storage


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``dctp materialize`` on the ``dctp`` command's subparsers."""
    view = sub.add_parser("materialize", help="write a version as sharded training files (parquet, jsonl, chat, "
                                              "sharegpt, alpaca, text) with manifest.json")
    view.add_argument("version", type=int, help="table version (see dctp versions)")
    view.add_argument("--format", required=True, choices=FORMATS)
    view.add_argument("--out", required=True, help="output folder: a local path or s3://bucket/prefix")
    view.add_argument("--split", choices=SPLITS, default=None, help="only this split (default: every split)")
    view.add_argument("--shard-rows", type=int, default=DEFAULT_SHARD_ROWS,
                      help=f"rows per file (default {DEFAULT_SHARD_ROWS:,}); a shard is built in memory, compressed")
    view.add_argument("--compression", choices=COMPRESSIONS, default="zstd",
                      help="JSON lines: .jsonl.zst, .jsonl.gz or .jsonl; parquet: the column codec (default zstd)")
    view.add_argument("--where", default=None,
                      help="row filter, e.g. \"domain = 'news' and quality >= 0.6\" (comparisons, in-lists, "
                           "is null, and/or/not over the table's columns; scores.NAME for a score)")
    synthetic = view.add_mutually_exclusive_group()
    synthetic.add_argument("--include-synthetic", dest="include_synthetic", action="store_true", default=True,
                           help="keep generated rows (the default)")
    synthetic.add_argument("--no-synthetic", dest="include_synthetic", action="store_false",
                           help="leave generated rows out")
    view.add_argument("--sample", type=int, default=None,
                      help="write a weighted sample of this many rows, drawn with replacement by sampling_weight")
    view.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    view.add_argument("--system-prompt", default=None, help="chat/sharegpt/alpaca: a system turn for every row")
    view.add_argument("--assistant-weight", default=None, metavar="NUMBER|sampling_weight",
                      help="chat: a weight on the assistant turn, a constant or each row's sampling_weight")
    view.add_argument("--with-weights", action="store_true",
                      help="add each row's sampling_weight to every JSON record")
    card = sub.add_parser("card", help="a version's dataset card (Hugging Face YAML front matter + Markdown)")
    card.add_argument("version", type=int)
    card.add_argument("--out", default=None, help="write the card to this file instead of printing it")
    validate = sub.add_parser("validate", help="run the validation checks on a version (schema, empty text, "
                                               "duplicates, split leakage, balance, PII, scores)")
    validate.add_argument("version", type=int)
    validate.add_argument("--html", default=None, help="also write the HTML report (with plots) to this file")


def materialize_command(storage: Storage, dataset: str, args: argparse.Namespace) -> dict:
    weight = args.assistant_weight
    if weight is not None and weight != "sampling_weight":
        try:
            weight = float(weight)
        except ValueError:
            raise ValueError(f"--assistant-weight must be a number or 'sampling_weight', got {weight!r}") from None
    spec = ViewSpec(args.format, split=args.split, where=args.where, shard_rows=args.shard_rows,
                    compression=args.compression, include_synthetic=args.include_synthetic, sample=args.sample,
                    seed=args.seed, options=FormatOptions(system_prompt=args.system_prompt, assistant_weight=weight,
                                                          with_weights=args.with_weights))
    return materialize(storage, dataset, args.version, Storage(args.out), spec, config=load_config())


def render_materialized(manifest: dict) -> str:
    lines = [f"{manifest['format']} view of {manifest['dataset']} version {manifest['version']}: "
             f"{manifest['rows']:,} rows in {len(manifest['files'])} files ({manifest['view_id']})"]
    lines += [f"  {split:<12} {rows:>10,}" for split, rows in manifest["splits"].items()]
    lines += [f"  not expressible in {manifest['format']}: {count:,} ({reason})"
              for reason, count in manifest["skipped"].items()]
    return "\n".join(lines)


def card_command(storage: Storage, dataset: str, args: argparse.Namespace) -> dict:
    text = build_card(storage, dataset, args.version, load_config())
    if args.out:
        Path(args.out).write_text(text)
    return {"version": args.version, "out": args.out, "text": text}


def validate_command(storage: Storage, dataset: str, args: argparse.Namespace) -> dict:
    """Validate a committed version; a failed ``error`` check makes the command exit non-zero."""
    report = validate_dataset(open_table(storage, dataset, args.version).to_pyarrow_dataset(), load_config())
    if args.html:
        Path(args.html).write_text(render_html(report, title=f"Validation of {dataset} version {args.version}"))
    return {"version": args.version, "html": args.html, **report.to_dict()}


def render_validation(out: dict) -> str:
    lines = [f"validation of version {out['version']}: {out['rows']:,} rows, "
             + ("ok" if out["ok"] else f"FAILED ({', '.join(out['errors'])})")]
    for check in out["checks"]:
        state = "skipped" if check["severity"] == "off" else "pass" if check["passed"] else "FAIL"
        lines.append(f"  {check['name']:<18} {state:<7} {check['severity']:<5}  {check['detail']}")
    if out["html"]:
        lines.append(f"report: {out['html']}")
    return "\n".join(lines)
