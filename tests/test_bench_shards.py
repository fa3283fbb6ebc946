"""``bench/bench_shards.py`` on a small day: the sharded stages run on 1 and 2 worker processes with equal results."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_the_shards_benchmark_runs_each_stage_on_each_worker_count(tmp_path):
    command = [sys.executable, str(REPO / "bench" / "bench_shards.py"), "--docs", "6000", "--shards", "3",
               "--batch-size", "1000", "--workers", "1", "2", "--workdir", str(tmp_path)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "shards_results.json").read_text())

    assert result["prepared"]["ingested"] == 6000 and [run["workers"] for run in result["runs"]] == [1, 2]
    for run in result["runs"]:
        stages = {s["stage"]: s for s in run["stages"]}
        assert list(stages) == ["normalize", "dedup_near", "score"]
        assert all(s["shards"] == 3 and s["seconds"] > 0 for s in stages.values()), stages
        assert list(stages["dedup_near"]["phases"]) == ["sign", "search"]
        assert all(s["reduce_peak_rss_mb"] > 0 and all(p["peak_rss_mb"] > 0 for p in s["phases"].values())
                   for s in stages.values())
        assert stages["normalize"]["input_rows"] == 6000
        # exact dedup between normalize and near dedup drops the planted copies; score reads near dedup's output
        assert stages["score"]["input_rows"] == stages["dedup_near"]["kept"] < stages["normalize"]["kept"]
    assert [s["kept"] for s in result["runs"][0]["stages"]] == [s["kept"] for s in result["runs"][1]["stages"]]
    report = (tmp_path / "shards_results.md").read_text()
    assert "| 1 |" in report and "| 2 |" in report and "speed-up" in report
    assert not (tmp_path / "data").exists(), "the day's data is deleted unless --keep-data"
