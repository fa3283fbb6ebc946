"""Sharded stages: any shard count gives the unsharded stage's rows, scores and ledger; shards retry alone; a re-plan
never reads an earlier plan's shards."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from dctp_tasks.config import ShardingConfig, load_config
from dctp_tasks.normalize import NORMALIZE, normalize_day
from dctp_tasks.publish import current, resolve
from dctp_tasks.quality.scoring import score_day
from dctp_tasks.shards import ShardsMissing
from dctp_tasks.staging import stage_rejects
from dctp_tasks.storage import S3Options, Storage, staging_dir
from tests.conftest import make_table, publish_stage, staged

DT = "2026-04-02"
COUNTS = (1, 3, 7)


@pytest.fixture(scope="module")
def news(shared_data) -> list[dict]:
    """120 AG News rows, with a few too short ones so normalize drops some: a real, mixed day."""
    with open(shared_data / "ag_news" / "test.csv", newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader)  # the header
        rows = [r for _, r in zip(range(120), reader, strict=False)]
    domains = {"1": "world", "2": "sports", "3": "business", "4": "tech"}
    texts = [f"{title}\n\n{body}" if i % 17 else title[:20] for i, (_, title, body) in enumerate(rows)]
    return [{"doc_id": f"news/{i}", "text": t, "domain": domains[r[0]]} for i, (t, r) in enumerate(zip(texts, rows))]


def ingest(storage: Storage, dag_id: str, news: list[dict]) -> None:
    table = make_table([r["text"] for r in news], doc_id=[r["doc_id"] for r in news], source=["news"] * len(news),
                       domain=[r["domain"] for r in news], dt=[DT] * len(news))
    publish_stage(storage, dag_id, DT, "ingest", table)


def config(shards: int, **overrides):
    # 8 rows per batch: 15 batches, enough to cut the day 7 ways
    return load_config(overrides={"batch_size": 8,
                                  "sharding.shards": {"normalize": shards, "score": shards, "score_models": shards},
                                  "quality.scorers": {"heuristics": {}, "language": {}, "pii": {}, "credibility": {},
                                                      "toxicity": {}},
                                  "quality.classifiers": {}, **overrides})


def without_lineage_params(table: pa.Table) -> pa.Table:
    """The score stages' lineage records a hash of their input files, which differs per layout; the steps don't."""
    steps = [[s["name"] for s in lineage["steps"]] for lineage in table.column("lineage").to_pylist()]
    return table.drop_columns(["lineage"]).append_column("steps", pa.array(steps))


def run_day(storage: Storage, dag_id: str, shards: int) -> dict:
    cfg = config(shards)
    normalized = normalize_day(storage, cfg, dag_id, DT)
    scored = score_day(storage, cfg, dag_id, DT, "cpu", input_stage="normalize", input_version=normalized.version)
    models = score_day(storage, cfg, dag_id, DT, "gpu", input_stage="score", input_version=scored.version)
    return {"normalize": normalized, "score": scored, "score_models": models}


def test_any_shard_count_gives_the_unsharded_rows_scores_and_ledger(tmp_path, news):
    storage = Storage(tmp_path.as_uri())
    results = {}
    for count in COUNTS:
        ingest(storage, f"s{count}", news)
        results[count] = run_day(storage, f"s{count}", count)
    for count in COUNTS:
        assert {stage: r.extra["shards"] for stage, r in results[count].items()} == dict.fromkeys(results[count],
                                                                                                  count)
        assert results[count]["normalize"].as_dict()["dropped_too_short"] == 8
    one = "s1"
    reference = {stage: without_lineage_params(staged(storage, one, DT, stage)) for stage in results[1]}
    drops = stage_rejects(storage, one, DT, "normalize").sort_by("doc_id")
    assert reference["score_models"].num_rows == 112
    for count in COUNTS[1:]:
        for stage in results[1]:
            sharded = without_lineage_params(staged(storage, f"s{count}", DT, stage))
            assert sharded.equals(reference[stage]), f"{stage} with {count} shards differs from one shard"
            assert results[count][stage].total == results[1][stage].total
            assert results[count][stage].kept == results[1][stage].kept
        assert stage_rejects(storage, f"s{count}", DT, "normalize").sort_by("doc_id").equals(drops)
    toxicity = reference["score_models"].column("scores").combine_chunks().field("toxicity")
    assert pc.count(toxicity.field(0)).as_py() == 112  # the model really ran on every row


def test_the_unsharded_score_cache_holds_whatever_the_shard_count(tmp_path, news):
    storage = Storage(tmp_path.as_uri())
    ingest(storage, "d", news)
    run_day(storage, "d", 3)
    again = score_day(storage, config(5), "d", DT, "gpu")
    assert again.extra["cached"] == 1 and again.total == 112


def test_a_retried_shard_replaces_only_its_own_files(tmp_path, news):
    storage = Storage(tmp_path.as_uri())
    ingest(storage, "d", news)
    cfg = config(3)
    shards = NORMALIZE.plan(storage, cfg, "d", DT)
    for shard in shards:
        NORMALIZE.phases["shard"](storage, cfg, shard)
    NORMALIZE.phases["shard"](storage, cfg, shards[1])  # the task retried after it had written everything
    # an attempt killed mid-write left a file no marker lists
    stray = storage.path(shards[2].output(), "rows", "part-00002-00007.parquet")
    storage.write_bytes(stray, b"half a file")
    result = NORMALIZE.finish(storage, cfg, shards)
    assert not storage.exists(storage.relative(stray))
    rows = staged(storage, "d", DT, "normalize")
    assert rows.num_rows == result.kept == 112
    assert len(set(rows.column("doc_id").to_pylist())) == 112


def test_the_reduce_refuses_a_shard_that_never_finished(tmp_path, news):
    storage = Storage(tmp_path.as_uri())
    ingest(storage, "d", news)
    cfg = config(3)
    shards = NORMALIZE.plan(storage, cfg, "d", DT)
    NORMALIZE.phases["shard"](storage, cfg, shards[0])
    NORMALIZE.phases["shard"](storage, cfg, shards[2])
    with pytest.raises(ShardsMissing, match=r"shard shard\(s\) 2 of 3"):
        NORMALIZE.finish(storage, cfg, shards)
    assert current(storage, staging_dir("d", DT, "normalize")) is None  # nothing was published


def test_a_new_plan_never_reads_an_earlier_plans_shards(tmp_path, news):
    storage = Storage(tmp_path.as_uri())
    ingest(storage, "d", news)
    old = NORMALIZE.plan(storage, config(7), "d", DT)
    for shard in old:
        NORMALIZE.phases["shard"](storage, config(7), shard)  # the run failed before its reduce
    result = normalize_day(storage, config(2), "d", DT)
    files = storage.list_files(staging_dir("d", DT, "normalize"))
    assert result.version != old[0].version
    assert {f.rsplit("/", 1)[1] for f in files if "/rows/" in f} == {"part-00000-00000.parquet",
                                                                      "part-00001-00000.parquet"}
    assert staged(storage, "d", DT, "normalize").num_rows == 112


def test_sharded_stages_on_s3(s3_bucket, news):
    storage = Storage(f"s3://{s3_bucket}/root", S3Options(endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                                                          access_key="testing", secret_key="testing"))
    ingest(storage, "d", news)
    result = normalize_day(storage, config(3), "d", DT)
    assert (result.total, result.kept, result.extra["shards"]) == (120, 112, 3)
    assert staged(storage, "d", DT, "normalize").column("doc_id").to_pylist()[:3] == ["news/1", "news/2", "news/3"]
    marker = json.loads(storage.read_bytes(storage.path(marker_path(storage, "d"))))
    assert marker["stats"]["total"] == 40 and marker["index"] == 1  # 15 batches of 8 cut at 5 and 10


def marker_path(storage: Storage, dag_id: str) -> str:
    version = current(storage, staging_dir(dag_id, DT, "normalize"))["version"]
    return f"{staging_dir(dag_id, DT, 'normalize')}/v-{version}/_shards/shard-00001.json"


@pytest.mark.parametrize(("rows", "setting", "expected"), [
    (0, "auto", 1), (10, "auto", 1), (200_000, "auto", 1), (200_001, "auto", 2), (10**8, "auto", 64),
    (10, 3, 3), (2, 7, 2), (10**6, 64, 64),
])
def test_shard_count(rows, setting, expected):
    assert ShardingConfig(shards={"normalize": setting}).count("normalize", rows) == expected


@pytest.mark.parametrize(("settings", "message"), [
    ({"shards": {"dedup_exact": 2}}, "the sharded stages are"),
    ({"shards": {"normalize": 65}}, "exceed sharding.max_shards=64"),
    ({"max_shards": 2000}, "less than or equal to 1024"),
    ({"shards": {"normalize": 0}}, "greater than or equal to 1"),
])
def test_sharding_settings_are_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        ShardingConfig(**settings)


def test_shards_cut_only_between_the_batches_the_unsharded_stage_reads(tmp_path, news):
    storage = Storage(tmp_path.as_uri())
    ingest(storage, "d", news[:100])  # 100 rows: batches of 8 start at 0, 8, …, 96
    shards = NORMALIZE.plan(storage, config(7), "d", DT)
    assert [(s.start, s.stop) for s in shards] == [(0, 16), (16, 32), (32, 40), (40, 56), (56, 72), (72, 88),
                                                   (88, 100)]
    assert len(NORMALIZE.plan(storage, config(7, batch_size=40), "d", DT)) == 3  # only 3 batches to share
    assert [(s.start, s.stop) for s in NORMALIZE.plan(storage, config(1), "d", DT)] == [(0, 100)]


@pytest.mark.parametrize(("start", "stop"), [(0, 50), (3, 4), (9, 31), (0, 0), (45, 50), (10, 20)])
def test_a_row_range_reads_only_those_rows_across_files_and_row_groups(tmp_path, start, stop):
    storage = Storage(tmp_path.as_uri())
    values = np.arange(50)
    with storage.writer("data", schema=pa.schema([("x", pa.int64())]), row_group_size=4) as writer:
        writer.rows_per_file = 20
        for chunk in np.array_split(values, 5):
            writer.write(pa.table({"x": chunk}))
    assert len(storage.list_files("data")) == 3
    got = [b.column("x").to_pylist() for b in storage.iter_range("data", start=start, stop=stop, batch_size=3)]
    assert sum(got, []) == list(range(start, stop))
    assert all(len(b) <= 3 for b in got)


def test_near_dedup_gives_the_same_survivors_ledger_and_history_for_any_shard_count(tmp_path):
    from dctp_tasks.dedup.near import STATE, dedup_near_day
    from dctp_tasks.storage import state_dir
    from tests.conftest import stage_dedup_input
    from tests.dedup.test_near import edited, passage, ts

    days = {"2026-04-01": [], "2026-04-02": []}
    for i in range(60):  # clusters within each day, across days, and one-offs; some bucket large enough to window
        base = passage(i)
        days["2026-04-01"].append((f"w/a{i}", base, ts(i % 20), "news" if i % 3 else "forum"))
        if i % 2:
            days["2026-04-01"].append((f"w/b{i}", edited(base), ts((i + 5) % 20)))
        if i % 5 == 0:
            days["2026-04-02"].append((f"w/c{i}", edited(base, (10, 90)), ts(1)))
        days["2026-04-02"].append((f"w/d{i}", passage(1000 + i // 4) if i % 4 else passage(2000 + i), ts(i % 7)))
    outcomes = {}
    for count in COUNTS:
        storage = Storage((tmp_path / f"s{count}").as_uri())
        cfg = load_config(overrides={"batch_size": 8, "sharding.shards.dedup_near": count,
                                     "dedup_near.domain_thresholds": {"forum": 0.8}})
        results = {}
        for dt, rows in days.items():
            stage_dedup_input(storage, "d", dt, "dedup_exact", rows)
            results[dt] = dedup_near_day(storage, cfg, "d", dt)
        outcomes[count] = {
            "results": {dt: {k: v for k, v in r.as_dict().items()
                             if k not in {"version", "output_uri", "seconds", "rows_per_s", "shards", "report"}}
                        for dt, r in results.items()},
            "rows": {dt: staged(storage, "d", dt, "dedup_near").drop_columns(["lineage"]) for dt in days},
            "drops": {dt: stage_rejects(storage, "d", dt, "dedup_near").sort_by("doc_id") for dt in days},
            "state": {(dt, part): storage.read_table(resolve(storage, state_dir(STATE, dt)), part)
                      for dt in days for part in ("signatures", "bands")},
            "shards": {dt: r.extra["shards"] for dt, r in results.items()},
        }
    assert outcomes[7]["shards"] == {"2026-04-01": 7, "2026-04-02": 7}
    one = outcomes[1]
    assert one["results"]["2026-04-02"]["duplicates_of_history"] > 0
    assert one["results"]["2026-04-01"]["dropped"] > 20
    for count in COUNTS[1:]:
        assert outcomes[count]["results"] == one["results"]
        for part in ("rows", "drops", "state"):
            for key, table in one[part].items():
                assert outcomes[count][part][key].equals(table), f"{part} {key} with {count} shards"


def test_semantic_dedup_gives_the_same_survivors_ledger_and_vectors_for_any_shard_count(tmp_path, shared_data):
    from dctp_tasks.dedup.semantic import dedup_semantic_day
    from dctp_tasks.embeddings import STATE
    from dctp_tasks.storage import state_dir
    from tests.conftest import stage_dedup_input

    with open(shared_data / "mrpc" / "msr_paraphrase_train.txt", encoding="utf-8-sig") as handle:
        pairs = [line.rstrip("\n").split("\t") for line in handle][1:41]
    days = {"2026-04-01": [(f"m/a{i}", p[3], ts_(i), "news" if i % 2 else "forum") for i, p in enumerate(pairs)]
            + [(f"m/b{i}", p[4], ts_(i + 1)) for i, p in enumerate(pairs) if i % 2],
            "2026-04-02": [(f"m/c{i}", p[4], ts_(i)) for i, p in enumerate(pairs) if i % 2 == 0]}
    outcomes = {}
    for count in COUNTS:
        storage = Storage((tmp_path / f"s{count}").as_uri())
        cfg = load_config(overrides={"batch_size": 8, "sharding.shards.dedup_semantic": count,
                                     "dedup_semantic.threshold": 0.85,
                                     "dedup_semantic.domain_thresholds": {"forum": 0.9}})
        results = {}
        for dt, rows in days.items():
            stage_dedup_input(storage, "d", dt, "dedup_near", rows)
            results[dt] = dedup_semantic_day(storage, cfg, "d", dt)
        outcomes[count] = {
            "results": {dt: {k: v for k, v in r.as_dict().items() if k not in {
                "version", "output_uri", "seconds", "rows_per_s", "shards", "report", "embed_docs_per_s"}}
                for dt, r in results.items()},
            "rows": {dt: staged(storage, "d", dt, "dedup_semantic").drop_columns(["lineage"]) for dt in days},
            "drops": {dt: stage_rejects(storage, "d", dt, "dedup_semantic").sort_by("doc_id") for dt in days},
            "state": {dt: storage.read_table(resolve(storage, state_dir(STATE, dt))) for dt in days},
            "shards": {dt: r.extra["shards"] for dt, r in results.items()},
            "work": [f for f in storage.list_files("staging", published=False) if "/_work/" in f],
        }
    one = outcomes[1]
    assert outcomes[7]["shards"] == {"2026-04-01": 7, "2026-04-02": 3}  # 20 rows: batches of 8 at 0, 8, 16
    assert one["results"]["2026-04-01"]["dropped"] > 3 and one["results"]["2026-04-02"]["duplicates_of_history"] > 3
    for count in COUNTS:
        assert outcomes[count]["work"] == []  # the shards' scratch files go once the version is published
    for count in COUNTS[1:]:
        assert outcomes[count]["results"] == one["results"]
        for part in ("rows", "drops", "state"):
            for key, table in one[part].items():
                assert outcomes[count][part][key].equals(table), f"{part} {key} with {count} shards"


def ts_(hour: int):
    from datetime import UTC, datetime

    return datetime(2026, 4, 1, hour % 24, tzinfo=UTC)
