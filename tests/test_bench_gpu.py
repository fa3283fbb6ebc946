"""``bench/bench_gpu.py --small`` still runs on a CPU: every path reports a rate, and both searches agree."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

PATHS = ["embed_texts (MiniLM)", "classifier (embed + logistic)", "mean_token_nll (SmolLM2, 600 chars)",
         "mean_token_nll (SmolLM2, 2,000 chars)", "toxicity (Detoxify BERT-base)"]


@pytest.mark.slow
def test_the_gpu_benchmark_runs_each_path_on_the_cpu(tmp_path, shared_data):
    command = [sys.executable, str(REPO / "bench" / "bench_gpu.py"), "--small", "--workdir", str(tmp_path)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_results.json").read_text())

    assert result["device"] == "cpu" and result["small"] and result["peak_tflops"] > 0
    assert [row["path"] for row in result["models"]] == PATHS
    for row in result["models"]:
        assert row["docs"] > 0 and row["docs_per_s"] > 0 and row["tokens"] >= row["docs"], row
        assert 0 < row["share_of_peak"] < 2, row
    long = result["models"][3]
    assert long["tokens"] / long["docs"] > 2.5 * result["models"][2]["tokens"] / result["models"][2]["docs"], \
        "2,000-character documents score over three times the tokens of 600-character ones"
    search = {row["path"]: row for row in result["search"]}
    assert set(search) == {"range search (faiss on cpu)", "range search (torch on cpu)"}
    assert all(row["identical_pairs"] and row["pairs_found"] > 0 for row in search.values())
    assert len({row["pairs_found"] for row in search.values()}) == 1
    assert "| embed_texts (MiniLM) |" in (tmp_path / "gpu_results.md").read_text()
