#!/usr/bin/env python3
"""Train the shipped offline toxicity classifier (``include/models/toxicity-minilm/``) and choose its threshold.

Usage::

    .venv/bin/python include/models/train_toxicity.py [--data PATH] [--boolq PATH] [--ag-news PATH] [--out DIR]

Logistic regression on all-MiniLM-L6-v2 sentence embeddings of the Jigsaw Toxic Comment Classification sample
(label ``toxic``), fitted and measured exactly as ``dctp train-scorer`` does (``fit_classifier``: stratified 20 %
hold-out, balanced class weights). The default threshold of rule ``toxicity.toxic`` is the lowest probability on a
0.01 grid that flags at most ``--max-clean-fpr`` of clean reference text (BoolQ Wikipedia passages and AG News
descriptions); its catch rate on the hold-out's toxic comments is recorded next to it. Writes ``coef.json`` and
``model.json`` (metrics, threshold, sweep, provenance); the data files are read in place, never copied. Encoding
≈ 15k texts takes about 3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from dctp_tasks.quality.classifier import DEFAULT_C, fit_classifier, write_classifier_dir
from dctp_tasks.quality.embeddings import EmbeddingConfig, encode

log = logging.getLogger("train_toxicity")

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "include" / "models" / "toxicity-minilm"
TEXT_COLUMN, LABEL_COLUMN = "comment_text", "toxic"
#: Jigsaw's finer labels; a toxic comment carrying one of them is "clearly toxic" (abuse, not only rudeness).
SUB_LABELS = ("severe_toxic", "obscene", "threat", "insult", "identity_hate")
MAX_CLEAN_FPR = 0.002
"""Share of clean text the default threshold may flag: 0.2 %, five times under 1 %. Halving it (0.1 %) moved the
threshold from 0.76 to 0.80 and caught 10 points fewer of the clearly toxic comments (model.json's sweep)."""
GRID = [round(0.5 + 0.01 * i, 2) for i in range(50)]
SWEEP = [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
SOURCES = {
    "jigsaw": {"source": "Jigsaw Toxic Comment Classification sample, via predibase/llm_distillation_playbook "
                         "data/dataset_subsets/train.5k.csv", "license": "CC0 labels, CC BY-SA text"},
    "boolq": {"source": "BoolQ validation, via DFKI-NLP/InterroLang data/boolq_validation.csv (column passage, "
                        "unique passages)", "license": "CC BY-SA 3.0"},
    "ag_news": {"source": "AG News test, via madhubandru/Text-Classification-on-News-Articles-using-BERT-Framework "
                          "ag_news_csv/test.csv (column description)", "license": "academic use"},
}


def read_csv(path: Path) -> pa.Table:
    """Read a local CSV whose free-text columns hold quoted newlines."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (pass its location with the matching option)")
    return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def jigsaw(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Return the comments, their 0/1 ``toxic`` label and whether each is clearly toxic (toxic plus a sub-label)."""
    table = read_csv(path)
    missing = [c for c in (TEXT_COLUMN, LABEL_COLUMN, *SUB_LABELS) if c not in table.column_names]
    if missing:
        raise ValueError(f"{path} has no column {missing[0]!r}; its columns are {table.column_names}")
    table = table.filter(pc.is_valid(table.column(LABEL_COLUMN)))
    y = table.column(LABEL_COLUMN).to_numpy().astype(np.int64)
    subs = np.vstack([pc.fill_null(table.column(c), 0).to_numpy() for c in SUB_LABELS]).sum(axis=0)
    texts = pc.fill_null(table.column(TEXT_COLUMN), "").to_pylist()
    return texts, y, (y == 1) & (subs > 0)


def clean_reference(boolq: Path, ag_news: Path) -> dict[str, list[str]]:
    """Return clean text by source: BoolQ's unique Wikipedia passages and AG News descriptions."""
    passages = sorted(set(pc.drop_null(read_csv(boolq).column("passage")).to_pylist()))
    descriptions = pc.drop_null(read_csv(ag_news).column("description")).to_pylist()
    return {"boolq": passages, "ag_news": descriptions}


def rates(held_out: np.ndarray, y: np.ndarray, clearly: np.ndarray, clean: dict[str, np.ndarray],
          threshold: float) -> dict:
    """Return the catch and false-positive rates of ``probability > threshold``."""
    every = np.concatenate(list(clean.values()))
    return {"threshold": threshold,
            "hold_out_tpr": round(float((held_out[y == 1] > threshold).mean()), 4),
            "hold_out_clearly_toxic_tpr": round(float((held_out[clearly] > threshold).mean()), 4),
            "hold_out_fpr": round(float((held_out[y == 0] > threshold).mean()), 4),
            "clean_fpr": round(float((every > threshold).mean()), 5),
            "clean_flagged": int((every > threshold).sum()),
            "clean_fpr_by_source": {k: round(float((p > threshold).mean()), 5) for k, p in clean.items()}}


def choose_threshold(held_out: np.ndarray, y: np.ndarray, clearly: np.ndarray, clean: dict[str, np.ndarray],
                     max_clean_fpr: float) -> dict:
    """Return the lowest grid threshold flagging at most ``max_clean_fpr`` of the clean text, with its rates."""
    every = np.concatenate(list(clean.values()))
    for threshold in GRID:
        if (every > threshold).mean() <= max_clean_fpr:
            return {"value": threshold, "max_clean_fpr": max_clean_fpr, "clean_rows": len(every),
                    **{k: v for k, v in rates(held_out, y, clearly, clean, threshold).items() if k != "threshold"},
                    "rule": "lowest threshold on a 0.01 grid (0.50-0.99) whose false-positive rate on the clean "
                            "reference text is at most max_clean_fpr",
                    "clearly_toxic": f"toxic == 1 and at least one of {', '.join(SUB_LABELS)}"}
    raise ValueError(f"no threshold up to {GRID[-1]} flags at most {max_clean_fpr:.2%} of the clean text")


def train(data: Path, boolq: Path, ag_news: Path, out: Path, seed: int = 0, c: float = DEFAULT_C,
          test_size: float = 0.2, device: str = "cpu", max_clean_fpr: float = MAX_CLEAN_FPR) -> dict:
    """Fit, measure and choose the threshold; write ``out``; return model.json's content."""
    import sentence_transformers
    import sklearn
    import torch

    from dctp_tasks.models import sentence_encoder

    # The scorer reuses semantic dedup's stored vectors: train on the same encoder settings (the model's own
    # 256-token limit), so training and scoring embed alike.
    embedding = EmbeddingConfig(device=device)
    texts, y, clearly = jigsaw(data)
    start = time.perf_counter()
    vectors = encode(texts, embedding)
    log.info("encoded %d comments in %.0f s", len(texts), time.perf_counter() - start)
    fitted = fit_classifier("toxicity", vectors, y, test_size=test_size, seed=seed, c=c)
    log.info("hold-out %s", fitted.metrics)
    clean = {name: fitted.model.probability(encode(docs, embedding))
             for name, docs in clean_reference(boolq, ag_news).items()}
    y_test, clearly_test = y[fitted.test], clearly[fitted.test]
    threshold = choose_threshold(fitted.held_out, y_test, clearly_test, clean, max_clean_fpr)
    encoder = sentence_encoder(None, device, None)
    meta = {
        "name": "toxicity-minilm", "scorer": "toxicity", "model": "logistic_regression",
        "trained_by": "include/models/train_toxicity.py",
        "embedding_model": "all-MiniLM-L6-v2", "max_seq_length": int(encoder.max_seq_length),
        "c": c, "class_weight": "balanced", "seed": seed, "test_size": test_size,
        "sklearn_version": sklearn.__version__,
        "text_column": TEXT_COLUMN, "label_column": LABEL_COLUMN, "positive_label": "1",
        "rows": len(y), "positives": int(y.sum()), "clearly_toxic": int(clearly.sum()),
        "train_rows": len(fitted.train), "test_rows": len(fitted.test), "test_positives": int(y_test.sum()),
        "test_clearly_toxic": int(clearly_test.sum()),
        "metrics": fitted.metrics, "threshold": threshold,
        "sweep": [rates(fitted.held_out, y_test, clearly_test, clean, t) for t in SWEEP],
        "data": {"file": data.name, "sha256": sha256(data), **SOURCES["jigsaw"]},
        "clean_reference": {name: {"file": path.name, "sha256": sha256(path), "rows": len(clean[name]),
                                   **SOURCES[name]} for name, path in (("boolq", boolq), ("ag_news", ag_news))},
        "versions": {"torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__},
    }
    write_classifier_dir(out, fitted.model, meta)
    return json.loads((out / "model.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "jigsaw_toxic" / "train.5k.csv",
                        help="Jigsaw CSV with comment_text, toxic and the sub-labels")
    parser.add_argument("--boolq", type=Path, default=SHARED_DATA / "boolq_wikipedia" / "boolq_validation.csv",
                        help="clean reference: BoolQ CSV (column passage)")
    parser.add_argument("--ag-news", type=Path, default=SHARED_DATA / "ag_news" / "test.csv",
                        help="clean reference: AG News CSV (column description)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="model folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--c", type=float, default=DEFAULT_C, help="inverse L2 strength")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                        help="where to encode (cpu: the shipped model's numbers are reproducible anywhere)")
    parser.add_argument("--max-clean-fpr", type=float, default=MAX_CLEAN_FPR,
                        help="share of clean text the default threshold may flag")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    meta = train(args.data.resolve(), args.boolq.resolve(), args.ag_news.resolve(), args.out, seed=args.seed,
                 c=args.c, device=args.device, max_clean_fpr=args.max_clean_fpr)
    t = meta["threshold"]
    print(f"wrote {args.out}: hold-out ROC-AUC {meta['metrics']['roc_auc']:.4f}, AP "
          f"{meta['metrics']['average_precision']:.4f}; threshold {t['value']}: clean FPR {t['clean_fpr']:.2%} "
          f"({t['clean_flagged']}/{t['clean_rows']}), toxic TPR {t['hold_out_tpr']:.1%}, clearly toxic TPR "
          f"{t['hold_out_clearly_toxic_tpr']:.1%}, hold-out FPR {t['hold_out_fpr']:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
