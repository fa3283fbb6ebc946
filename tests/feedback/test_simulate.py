"""``dctp al-simulate`` on 600 real Jigsaw comments (encoded once for the module), plus input validation."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from dctp_tasks.cli.al_simulate import add_parser, al_simulate
from dctp_tasks.feedback import simulate as simulate_module
from dctp_tasks.feedback.simulate import CSV_COLUMNS, STRATEGIES, simulate
from dctp_tasks.quality import embeddings

JIGSAW = ["--text-column", "comment_text", "--label-column", "is_bad", "--max-rows", "600"]
SMALL = ["--budget", "20", "--rounds", "2"]


@pytest.fixture(scope="module")
def encoder_calls() -> list[int]:
    """Encode with the real MiniLM, once per distinct text list: reruns in this module cost no encoding."""
    calls: list[int] = []
    cache: dict[tuple[str, ...], np.ndarray] = {}
    real = embeddings.encode

    def spy(texts, cfg):
        calls.append(len(texts))
        key = tuple(texts)
        if key not in cache:
            cache[key] = real(texts, cfg)
        return cache[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(embeddings, "encode", spy)
        yield calls


def run(*argv: str) -> dict:
    parser = argparse.ArgumentParser(prog="dctp")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return al_simulate(None, None, parser.parse_args(["al-simulate", *argv]))


@pytest.fixture(scope="module")
def jigsaw(shared_data) -> Path:
    return shared_data / "jigsaw_toxic" / "train.5k.csv"


@pytest.fixture(scope="module")
def compared(jigsaw, encoder_calls, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("al") / "out"
    result = run("--data", str(jigsaw), *JIGSAW, *SMALL, "--compare", "margin,qbc,coreset", "--seeds", "0,1",
                 "--out", str(out))
    return {"result": result, "out": out, "encoded": list(encoder_calls)}


def _csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_texts_are_encoded_once_for_every_strategy_and_seed(compared):
    assert compared["encoded"] == [600]
    result = compared["result"]
    assert (result["rows"], result["pool_rows"], result["test_rows"]) == (600, 480, 120)
    assert result["positives"] == 59 and result["positive_label"] == "true"  # is_bad holds True/False


def test_learning_curve_csv_has_a_row_per_strategy_seed_and_round(compared):
    rows = _csv(compared["out"] / "learning_curve.csv")
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 4 * 2 * 3  # margin, qbc, coreset + the random baseline; 2 seeds; initial + 2 rounds
    assert [r["strategy"] for r in rows[::3]] == ["margin", "qbc", "coreset", "random"] * 2
    for r in rows:
        assert int(r["labels"]) == 20 + 20 * int(r["round"])  # --initial defaults to the budget
        assert 0.0 <= float(r["roc_auc"]) <= 1.0 and 0.0 < float(r["average_precision"]) <= 1.0
    for seed in ("0", "1"):  # one initial set per seed, shared by every strategy
        first = {(r["roc_auc"], r["average_precision"]) for r in rows if r["seed"] == seed and r["round"] == "0"}
        assert len(first) == 1
    assert rows[0]["roc_auc"] != rows[12]["roc_auc"]  # another seed: another split and initial set


def test_plot_and_summary_are_written(compared):
    assert (compared["out"] / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((compared["out"] / "summary.json").read_text())
    curves = summary["curves"]
    assert list(curves) == ["margin", "qbc", "coreset", "random"] == compared["result"]["strategies"]
    assert curves["margin"]["labels"] == [20, 40, 60] and summary["seeds"] == [0, 1]
    rows = _csv(compared["out"] / "learning_curve.csv")
    last = [float(r["roc_auc"]) for r in rows if r["strategy"] == "margin" and r["round"] == "2"]
    random_last = [float(r["roc_auc"]) for r in rows if r["strategy"] == "random" and r["round"] == "2"]
    assert curves["margin"]["final_roc_auc"] == pytest.approx(np.mean(last), abs=1e-6)
    assert curves["margin"]["gain_final"] == pytest.approx(np.mean(last) - np.mean(random_last), abs=1e-6)
    assert "gain_final" not in curves["random"] and 0 < curves["coreset"]["aulc"] <= 1
    text = compared["result"]["summary"]
    assert "hold-out ROC-AUC by labels used, mean over 2 seed(s)" in text and "(baseline)" in text
    assert text.count("\n     40 ") == 1 and "learning_curve.png" in text


def test_same_seed_gives_the_same_csv_and_another_seed_another(jigsaw, encoder_calls, tmp_path):
    # The --max-rows sample is drawn with the first seed: these runs share it (and the module's encoding).
    args = ["--data", str(jigsaw), *JIGSAW, *SMALL, "--compare", "margin-coreset,least-confidence,entropy"]
    run(*args, "--seeds", "0,1", "--out", str(tmp_path / "a"))
    run(*args, "--seeds", "0,1", "--out", str(tmp_path / "b"))
    run(*args, "--seeds", "0,2", "--out", str(tmp_path / "c"))
    first = (tmp_path / "a" / "learning_curve.csv").read_bytes()
    assert first == (tmp_path / "b" / "learning_curve.csv").read_bytes()
    rows, other = _csv(tmp_path / "a" / "learning_curve.csv"), _csv(tmp_path / "c" / "learning_curve.csv")
    assert sorted({r["strategy"] for r in rows}) == ["entropy", "least-confidence", "margin-coreset", "random"]
    assert [r for r in rows if r["seed"] == "0"] == [r for r in other if r["seed"] == "0"]  # seeds run independently
    assert [r["roc_auc"] for r in rows if r["seed"] == "1"] != [r["roc_auc"] for r in other if r["seed"] == "2"]


def test_initial_set_size_and_labels_growth(jigsaw, encoder_calls, tmp_path):
    run("--data", str(jigsaw), *JIGSAW, "--budget", "15", "--rounds", "3", "--initial", "10", "--strategy",
        "random", "--out", str(tmp_path))
    rows = _csv(tmp_path / "learning_curve.csv")
    assert [int(r["labels"]) for r in rows] == [10, 25, 40, 55]


def _toy(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(np.int64)
    vectors = rng.normal(size=(n, 16)).astype(np.float32)
    vectors[:, 0] += 1.5 * y
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), y


def test_every_strategy_labels_new_distinct_pool_docs_only(monkeypatch):
    vectors, y = _toy()
    seen: list[tuple[str, np.ndarray, np.ndarray]] = []
    real = simulate_module._query

    def spy(strategy, model, vectors, y, labeled, unlabeled, budget, *rest):
        picked = real(strategy, model, vectors, y, labeled, unlabeled, budget, *rest)
        seen.append((strategy, labeled, picked))
        return picked

    monkeypatch.setattr(simulate_module, "_query", spy)
    rows, seconds = simulate(vectors, y, STRATEGIES, budget=10, rounds=3, seeds=[0], test_size=0.25)
    assert set(seconds) == set(STRATEGIES) and len(rows) == len(STRATEGIES) * 4
    assert len(seen) == len(STRATEGIES) * 3
    for strategy, labeled, picked in seen:
        assert len(picked) == 10 == len(set(picked.tolist())), strategy
        assert not np.isin(picked, labeled).any(), strategy
    # The uncertainty strategies pick the docs the model is least sure of: the same docs for a binary model.
    first = {s: p.tolist() for s, _, p in seen[::3]}
    assert first["margin"] == first["least-confidence"] == first["entropy"] != first["random"]


def test_bad_inputs_fail_before_anything_is_encoded(jigsaw, encoder_calls, tmp_path):
    before = len(encoder_calls)
    base = ["--data", str(jigsaw), *JIGSAW, "--out", str(tmp_path)]
    with pytest.raises(ValueError, match="unknown strategy 'uncertainty'; valid strategies are least-confidence, "
                                         "margin, entropy, qbc, coreset, margin-coreset, random"):
        run(*base, "--compare", "margin,uncertainty")
    with pytest.raises(ValueError, match="--budget and --rounds must be at least 1, got budget=0, rounds=10"):
        run(*base, "--budget", "0")
    with pytest.raises(ValueError, match="got budget=50, rounds=0"):
        run(*base, "--rounds", "0")
    with pytest.raises(ValueError, match=r"50 initial \+ 10 rounds x 50 = 550 labels, but the pool .* has 480"):
        run(*base)
    with pytest.raises(ValueError, match="--seeds '0,x': expected comma-separated integers"):
        run(*base, *SMALL, "--seeds", "0,x")
    with pytest.raises(ValueError, match="--initial must be at least 2"):
        run(*base, *SMALL, "--initial", "1")
    with pytest.raises(FileNotFoundError, match="labeled data .*missing.csv does not exist"):
        run("--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path))
    with pytest.raises(ValueError, match="no column 'label'; its columns are"):
        run("--data", str(jigsaw), "--text-column", "comment_text", "--out", str(tmp_path))
    one_class = tmp_path / "one.csv"
    pacsv.write_csv(pa.table({"text": [f"doc {i}" for i in range(30)], "label": [1] * 30}), one_class)
    with pytest.raises(ValueError, match=r"'label' holds only \['1'\]"):
        run("--data", str(one_class), "--out", str(tmp_path))
    few = tmp_path / "few.csv"
    pacsv.write_csv(pa.table({"text": [f"doc {i}" for i in range(30)], "label": [1] + [0] * 29}), few)
    with pytest.raises(ValueError, match="1 positive and 29 negative rows; a stratified hold-out needs at least 2"):
        run("--data", str(few), "--budget", "2", "--rounds", "1", "--out", str(tmp_path))
    assert len(encoder_calls) == before


def test_the_dctp_command_prints_the_summary_and_reports_bad_input(jigsaw, encoder_calls, tmp_path, capsys):
    from dctp_tasks.cli import main

    out = tmp_path / "curve"
    argv = ["--root", str(tmp_path / "root"), "al-simulate", "--data", str(jigsaw), *JIGSAW, *SMALL]
    assert main([*argv, "--compare", "qbc,coreset", "--members", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "hold-out ROC-AUC by labels used" in printed and printed.count("(baseline)") == 1
    assert len(_csv(out / "learning_curve.csv")) == 3 * 3
    assert main([*argv, "--strategy", "bald", "--out", str(out)]) == 2
    assert "dctp: unknown strategy 'bald'; valid strategies are least-confidence" in capsys.readouterr().err


def test_a_small_initial_set_holds_two_of_each_class_so_qbc_can_start():
    vectors, y = _toy(seed=1)
    y[:] = 0
    y[:24] = 1  # 6 %: an initial set of 10 in proportion would hold 0.6 positives
    pool = np.arange(len(y))
    drawn = simulate_module._stratified_draw(pool, y, 10, np.random.default_rng(0))
    assert len(drawn) == 10 == len(set(drawn.tolist())) and y[drawn].sum() == 2
    assert y[simulate_module._stratified_draw(pool, y, 3, np.random.default_rng(0))].sum() == 1
    rows, _ = simulate(vectors, y, ["qbc"], budget=10, rounds=2, seeds=[0])
    assert [r["labels"] for r in rows if r["strategy"] == "qbc"] == [10, 20, 30]
    with pytest.raises(ValueError, match="--initial must be at least 4 for qbc"):
        simulate(vectors, y, ["qbc"], budget=10, rounds=2, initial=3)
