"""``dctp al-simulate --data FILE``: compare active-learning strategies offline on a labeled file, with the encoder and
classifier of ``dctp train-scorer``; writes ``learning_curve.csv``, ``learning_curve.png`` and ``summary.json``.
"""

from __future__ import annotations

import argparse

from dctp_tasks.feedback.simulate import STRATEGIES, parse_strategies, simulate_file
from dctp_tasks.storage import Storage


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``dctp al-simulate`` on the ``dctp`` command's subparsers."""
    parser = sub.add_parser("al-simulate", help="replay a labeled file as active learning: labels used vs hold-out "
                                                "ROC-AUC per strategy, plotted against random picks")
    parser.add_argument("--data", required=True, help="labeled CSV or Parquet file with a text and a label column")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--positive-label", default=None, help="the label value that means positive (default: 1/true)")
    parser.add_argument("--strategy", default="margin", help=f"one of {', '.join(STRATEGIES)} (default: margin)")
    parser.add_argument("--compare", default=None, metavar="S1,S2,...",
                        help="several strategies on one plot, e.g. margin,qbc,coreset,random (replaces --strategy); "
                             "random is always run as the baseline")
    parser.add_argument("--budget", type=int, default=50, help="docs labeled per round (default: 50)")
    parser.add_argument("--rounds", type=int, default=10, help="labeling rounds after the initial set (default: 10)")
    parser.add_argument("--initial", type=int, default=None,
                        help="initial labeled docs, drawn at random stratified by class (default: the budget)")
    parser.add_argument("--seed", type=int, default=0, help="split, initial set and random picks (default: 0)")
    parser.add_argument("--seeds", default=None, metavar="0,1,2", help="average over these seeds (replaces --seed)")
    parser.add_argument("--members", type=int, default=5, help="qbc: bootstrap committee size (default: 5)")
    parser.add_argument("--test-size", type=float, default=0.2, help="stratified hold-out share (default: 0.2)")
    parser.add_argument("--max-rows", type=int, default=None,
                        help="use a stratified sample of this many rows (drawn with the first seed)")
    parser.add_argument("--out", default="al-simulate", help="output folder (default: ./al-simulate/)")


def al_simulate(storage: Storage | None, dataset: str | None, args: argparse.Namespace) -> dict:
    """Run the simulation ``args`` describe; return its summary (``summary``: the rendered text). No data root is
    read: ``storage`` and ``dataset`` are the CLI's common arguments."""
    strategies = parse_strategies(args.compare if args.compare else args.strategy)
    return simulate_file(args.data, args.out, text_column=args.text_column, label_column=args.label_column,
                         positive_label=args.positive_label, strategies=strategies, budget=args.budget,
                         rounds=args.rounds, seeds=parse_seeds(args.seeds) if args.seeds else [args.seed],
                         initial=args.initial, test_size=args.test_size, members=args.members,
                         max_rows=args.max_rows)


def parse_seeds(text: str) -> list[int]:
    """Return the integers of a comma-separated list such as ``0,1,2``."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds:
        raise ValueError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2")
    return seeds
