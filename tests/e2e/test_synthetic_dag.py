"""Synthetic generation in the real ``dctp_daily`` DAG (``dag.test()``) on a demo day, with the generator and judge
behind an OpenAI-compatible endpoint reached through the Airflow connection ``dctp_llm``: the version holds the
accepted synthetic rows, its ledger accounts for every generated one, a re-run calls no model, ``dctp_rescore``
re-decides them without a model call, and ``dctp show`` / ``versions`` / ``ledger`` say what happened."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from dctp_tasks.cli import main
from dctp_tasks.export import METADATA_PREFIX, committed_ledger, latest_commit, open_table
from dctp_tasks.ledger import ledger_report
from dctp_tasks.storage import Storage
from tests.conftest import REPO, config_file
from tests.e2e.test_dag_e2e import demo_corpus
from tests.synthetic.llm_server import LLMServer

pytestmark = pytest.mark.slow

DT = "2026-02-12"
SETTINGS = {
    "quality.scorers.perplexity.enabled": False,  # the CPU-slow model scorer: not what this test is about
    "synthetic.min_share_of_largest": 0.5,
    "synthetic.daily_budget": 30,
    "synthetic.generator": {"backend": "openai", "model": "served-model", "batch_size": 4},
}


@pytest.fixture
def llm():
    server = LLMServer()
    yield server
    server.close()


def partition(storage: Storage, version: int | None = None):
    table = open_table(storage, "curated", version).to_pyarrow_dataset().to_table(filter=ds.field("dt") == DT)
    return table.sort_by("doc_id")


def test_generated_rows_land_in_the_version_and_are_re_decided_without_a_model(airflow_db, tmp_path, monkeypatch,
                                                                                  llm, capsys):
    from airflow.dag_processing.dagbag import DagBag

    root = (tmp_path / "data").as_uri()
    monkeypatch.setenv("DCTP_DATA_ROOT", root)
    monkeypatch.setenv("DCTP_FEEDBACK_URL", f"sqlite:///{tmp_path}/feedback.db")
    monkeypatch.setenv("DCTP_CONFIG", str(config_file(tmp_path, SETTINGS)))
    # the endpoint as a deployment declares it: an Airflow connection (host = the API base, password = the key)
    monkeypatch.setenv("AIRFLOW_CONN_DCTP_LLM", json.dumps({"conn_type": "http", "host": llm.endpoint.base_url,
                                                             "password": "sk-e2e"}))
    storage = Storage(root)
    demo_corpus().generate(storage, [DT], seed=5, rows_per_day=200)
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    logical = datetime.fromisoformat(DT).replace(tzinfo=UTC)

    assert bag.dags["dctp_daily"].test(logical_date=logical).state == "success"
    commit = latest_commit(storage, "curated", DT)
    synthesized = int(commit[f"{METADATA_PREFIX}synthesized"])
    exported = partition(storage)
    synthetic = exported.filter(pc.equal(exported.column("synthetic"), True))
    assert synthesized > 0 and synthetic.num_rows == int(commit[f"{METADATA_PREFIX}synthetic_rows"]) > 0
    assert synthetic.num_rows / exported.num_rows <= 0.10  # the default max_share
    assert set(synthetic.column("source").to_pylist()) == {"synthetic"}
    assert {g["model"] for g in synthetic.column("generation").to_pylist()} == {"served-model"}
    assert {r["authorization"] for r in llm.requests} == {"Bearer sk-e2e"}  # the connection's key
    _, rejects = committed_ledger(storage, "curated", DT)
    report = ledger_report(rejects, DT, int(commit[f"{METADATA_PREFIX}ingested"]), exported.num_rows, synthesized)
    assert report.balanced, report.render()
    rejected = {k: v for k, v in report.by_reason.items() if ".synthetic_" in k}
    assert sum(rejected.values()) == synthesized - synthetic.num_rows
    asked = len(llm.requests)
    assert asked > 0

    # the operator's views: versions, show and the ledger name the synthetic rows and why others were rejected
    capsys.readouterr()
    assert main(["versions"]) == 0 and main(["show", str(commit["version"])]) == 0 and main(["ledger", DT]) == 0
    out = capsys.readouterr().out
    assert f"synthetic: {synthetic.num_rows:,} rows" in out
    assert f"+ synthesized {synthesized:,}" in out
    assert rejected, "the endpoint's pairs repeat prompts within a chunk: some are rejected as copies"
    assert "synthetic rows rejected (ledger reasons):" in out and "synthetic rejected:" in out
    for reason, count in rejected.items():
        assert f"{reason.removeprefix('filtered.')}" in out and count > 0

    # a re-run of the date generates and judges nothing again: every batch is read back
    assert bag.dags["dctp_daily"].test(logical_date=logical).state == "success"
    assert len(llm.requests) == asked
    assert partition(storage).column("doc_id").equals(exported.column("doc_id"))

    # dctp_rescore: a stricter judge threshold than the endpoint's scores (8) rejects every synthetic row, with
    # no model call; the new version's ledger still balances
    rescore = DagBag(dag_folder=str(REPO / "dags")).dags["dctp_rescore"]
    run = rescore.test(run_conf={"date": DT, "config_overrides": {"synthetic.judge_threshold": 9}})
    assert run.state == "success"
    assert len(llm.requests) == asked
    after = partition(storage)
    assert pc.sum(after.column("synthetic")).as_py() == 0
    assert after.num_rows == exported.num_rows - synthetic.num_rows
    commit, rejects = committed_ledger(storage, "curated", DT)
    assert int(commit[f"{METADATA_PREFIX}synthesized"]) == synthesized
    report = ledger_report(rejects, DT, int(commit[f"{METADATA_PREFIX}ingested"]), after.num_rows, synthesized)
    assert report.balanced and report.by_reason["filtered.synthetic_low_quality"] >= synthetic.num_rows
