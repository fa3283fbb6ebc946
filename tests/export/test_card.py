"""Dataset cards: a real two-date Delta table (two real sources, one hostile source name, synthetic rows, scores,
expert consensus, ledgers) rendered as a Hugging Face card whose numbers equal the data."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from huggingface_hub import DatasetCard

from dctp_tasks.config import load_config
from dctp_tasks.export import Staged, committed_ledger, open_table
from dctp_tasks.export import export_day as export_stage
from dctp_tasks.export.card import build_card, card_stats, md, render_card, size_category
from dctp_tasks.ledger import RejectWriter, ledger_report
from dctp_tasks.records import CORE_SCHEMA, DEDUPED_SCHEMA, content_hashes
from dctp_tasks.staging import REJECTS, ROWS, stage_output
from dctp_tasks.storage import Storage
from tests.conftest import make_table, publish_stage

DAG = "dag"
DAY1, DAY2 = "2026-01-01", "2026-01-02"
EVIL = "evil|<script>alert(1)</script>"
EVIL_DOMAIN = "a|b\nc"
SECRET = "SECRET-TEXT"
LICENSED = {"ingest.sources.web.license": "cc-by-4.0", "ingest.sources.wiki.license": "cc-by-sa-3.0"}
CONFIG = load_config(overrides=LICENSED)
CONFIG_DAY2 = load_config(overrides={**LICENSED, "batch_size": 5_000})  # another config hash
SCHEMA = pa.schema([*DEDUPED_SCHEMA, pa.field("quality", pa.float32()), pa.field("quality_verdict", pa.string()),
                    pa.field("scores", pa.struct([("toxicity", pa.struct([("toxicity", pa.float32())]))])),
                    pa.field("consensus", pa.string()), pa.field("generation", pa.struct([("model", pa.string())]))])


def rows(dt: str, ids: list[str], *, source: str, domain: list[str], lang: list[str], quality: list,
         toxicity: list, consensus: list | None = None, weight: list | None = None,
         synthetic: bool = False) -> pa.Table:
    n = len(ids)
    table = make_table([f"{SECRET} {i} with enough words" for i in ids], doc_id=ids, dt=[dt] * n,
                       source=[source] * n, domain=domain, synthetic=[synthetic] * n,
                       sampling_weight=weight or [1.0] * n)
    extra = {
        "lang": pa.array(lang), "lang_score": pa.array([0.9] * n, pa.float32()),
        "content_hash": content_hashes(table.column("text")), "quality": pa.array(quality, pa.float32()),
        "quality_verdict": pa.array(["pass"] * n),
        "scores": pa.array([None if t is None else {"toxicity": {"toxicity": t}} for t in toxicity],
                           SCHEMA.field("scores").type),
        "consensus": pa.array(consensus or [None] * n, pa.string()),
        "generation": pa.array([{"model": "tiny-lm"} if synthetic else None] * n, SCHEMA.field("generation").type),
    }
    for name, values in extra.items():
        table = table.append_column(SCHEMA.field(name), values)
    return table.cast(SCHEMA)


def publish(storage: Storage, dt: str, table: pa.Table, drops: list[tuple[str, str, str, str]]) -> None:
    """Publish the decided rows of ``dt`` and the rows dropped on the way: ``(doc_id, outcome, reason, source)``."""
    with stage_output(storage, DAG, dt, "quality") as out, out.writer(ROWS, schema=table.schema) as writer, \
            RejectWriter(storage, out.sub(REJECTS), dt, "quality") as rejects:
        writer.write(table)
        for doc_id, outcome, reason, source in drops:
            rejects.add(doc_id, outcome, reason, source=source)


def export(storage: Storage, config, dt: str, *, run_id: str, mlflow: str, ingested: int, synthesized: int) -> None:
    ledger = [Staged(DAG, s) for s in ("ingest", "quality") if storage.exists(f"staging/{DAG}/dt={dt}/{s}")]
    export_stage(storage, config, DAG, dt, run_id=run_id, rows=Staged(DAG, "quality"), ledger=ledger,
                 ingested=ingested, synthesized=synthesized, metadata={"mlflow_run_id": mlflow})


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Storage:
    storage = Storage(tmp_path_factory.mktemp("card").as_uri())
    web = list(range(30))
    day1 = pa.concat_tables([
        rows(DAY1, [f"web/{i}" for i in web], source="web", domain=["science" if i % 2 else "health" for i in web],
             lang=["de" if i % 5 == 0 else "en" for i in web], quality=[None if i == 3 else i / 30 for i in web],
             toxicity=[(i % 10) / 10 for i in web],
             consensus=["good" if i % 7 == 0 else "needs_review" if i == 1 else None for i in web],
             weight=[2.0 if i % 7 == 0 else 1.0 for i in web]),
        rows(DAY1, [f"wiki/{i}" for i in range(10)], source="wiki", domain=["science"] * 10, lang=["fr"] * 10,
             quality=[0.5] * 10, toxicity=[0.0] * 10),
        rows(DAY1, [f"synthetic/{i}" for i in range(5)], source="synthetic", domain=["health"] * 5,
             lang=["en"] * 5, quality=[0.9] * 5, toxicity=[None] * 5, synthetic=True),
    ])
    publish(storage, DAY1, day1, [
        *((f"web/dup{i}", "duplicate", "exact_duplicate", "web") for i in range(3)),
        *((f"web/bad{i}", "filtered", "too_few_words", "web") for i in range(2)),
        ("synthetic/bad0", "filtered", "synthetic_low_quality", "synthetic")])
    publish_stage(storage, DAG, DAY1, "ingest", CORE_SCHEMA.empty_table(),
                  [(f"web/quarantine:f.jsonl:{n}", "quarantined", "malformed_json") for n in range(4)])
    export(storage, CONFIG, DAY1, run_id="run-1", mlflow="m-1", ingested=40 + 3 + 2 + 4, synthesized=5 + 1)
    day2 = pa.concat_tables([
        rows(DAY2, [f"evil/{i}" for i in range(6)], source=EVIL, domain=[EVIL_DOMAIN] * 6, lang=["en"] * 6,
             quality=[0.25] * 6, toxicity=[0.1] * 6),
        rows(DAY2, [f"web/{i}" for i in range(100, 104)], source="web", domain=["science"] * 4, lang=["en"] * 4,
             quality=[0.75] * 4, toxicity=[0.1] * 4),
    ])
    publish(storage, DAY2, day2, [("web/dup9", "duplicate", "exact_duplicate", "web")])
    export(storage, CONFIG_DAY2, DAY2, run_id="run-2", mlflow="m-2", ingested=10 + 1, synthesized=0)
    return storage


@pytest.fixture(scope="module")
def data(storage) -> pa.Table:
    return open_table(storage, "curated").to_pyarrow_dataset().to_table(
        columns=["split", "source", "domain", "quality", "synthetic"])


@pytest.fixture(scope="module")
def stats(storage) -> dict:
    return card_stats(storage, "curated", None, CONFIG)


@pytest.fixture(scope="module")
def card(stats) -> str:
    return render_card(stats, CONFIG)


def test_front_matter_is_a_valid_hugging_face_card(card, stats):
    meta = DatasetCard(card).data.to_dict()
    assert meta["language"] == ["en", "fr", "de"]  # most common first: 39, 10, 6
    assert meta["license"] == "other"  # web and wiki differ, and the hostile source has none
    assert meta["pretty_name"] == "curated"
    assert meta["size_categories"] == ["n<1K"]
    assert meta["task_categories"] == ["text-generation"]
    assert meta["annotations_creators"] == ["expert-generated", "machine-generated"]
    assert meta["source_datasets"] == ["original"]
    assert "configs" not in meta
    assert stats["rows"] == 55 and stats["version"] == 2


def test_configs_list_the_data_files_of_each_split(stats):
    files = {"train": ["data/train-*.parquet"], "test": ["data/test-0.parquet", "data/test-1.parquet"]}
    meta = DatasetCard(render_card(stats, CONFIG, data_files=files)).data.to_dict()
    assert meta["configs"] == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/train-*.parquet"},
        {"split": "test", "path": ["data/test-0.parquet", "data/test-1.parquet"]}]}]
    for bad in ("/abs/train.parquet", "../train.parquet", "s3://bucket/train.parquet"):
        with pytest.raises(ValueError, match="relative"):
            render_card(stats, CONFIG, data_files={"train": [bad]})


@pytest.mark.parametrize(("overrides", "version", "expected"), [
    ({"export.card.license": "apache-2.0"}, 1, "apache-2.0"),  # configured: wins over the sources
    ({"ingest.sources.web.license": "mit", "ingest.sources.wiki.license": "mit"}, 1, "mit"),  # shared
    (LICENSED, 1, "other"),  # they differ
    ({"ingest.sources.web.license": "mit"}, 1, "other"),  # wiki's is not configured
    ({}, 1, "unknown"),  # none configured
    ({"ingest.sources.web.license": "mit", "ingest.sources.wiki.license": "mit"}, 2, "other"),  # + EVIL, unlicensed
])
def test_license_derivation(storage, overrides, version, expected):
    config = load_config(overrides=overrides)
    meta = DatasetCard(build_card(storage, "curated", version, config)).data.to_dict()
    assert meta["license"] == expected  # synthetic rows never count as a source of their own


@pytest.mark.parametrize(("rows", "bucket"), [
    (0, "n<1K"), (999, "n<1K"), (1_000, "1K<n<10K"), (9_999, "1K<n<10K"), (10_000, "10K<n<100K"),
    (999_999, "100K<n<1M"), (1_000_000, "1M<n<10M"), (10**7, "10M<n<100M"), (10**8, "100M<n<1B"),
    (10**12 - 1, "100B<n<1T"), (10**12, "n>1T")])
def test_size_categories(stats, rows, bucket):
    assert size_category(rows) == bucket
    assert DatasetCard(render_card({**stats, "rows": rows}, CONFIG)).data.size_categories == [bucket]


def counts(table: pa.Table, column: str) -> dict[str, int]:
    pairs = pc.value_counts(table.column(column)).to_pylist()
    return {p["values"]: p["counts"] for p in pairs}


def test_counts_in_the_body_equal_the_data(card, stats, data):
    by_split = counts(data, "split")
    assert stats["by_split"] == dict(sorted(by_split.items(), key=lambda kv: (-kv[1], kv[0])))
    assert stats["by_source"] == {"web": 34, "wiki": 10, EVIL: 6, "synthetic": 5}
    assert stats["by_domain"] == {"science": 29, "health": 20, EVIL_DOMAIN: 6}
    for column in ("split", "source", "domain"):
        for value, n in counts(data, column).items():
            assert f"| {md(value)} | {n:,} | {n / 55:.1%} |" in card
    assert f"**55 rows** from Delta version 2 of `{stats['uri']}`, 2 dates ({DAY1} to {DAY2})." in card
    assert stats["synthetic"] == {"rows": 5, "share": round(5 / 55, 6), "by_domain": {"health": 5},
                                  "by_model": {"tiny-lm": 5}}
    assert "| tiny-lm | 5 | 100.0% |" in card
    assert SECRET not in card and SECRET not in json.dumps(stats)  # document text never reaches the card


def test_quality_toxicity_and_feedback_distributions(card, stats, data):
    quality = data.column("quality").to_numpy(zero_copy_only=False).astype(np.float64)
    quality = quality[~np.isnan(quality)]
    overall = stats["quality"]["overall"]
    assert overall["count"] == 54 and overall["p50"] == pytest.approx(np.percentile(quality, 50))
    assert overall["mean"] == pytest.approx(quality.mean())
    assert f"| all rows | 54 | {overall['mean']:.3f} | {overall['p5']:.3f} |" in card
    assert set(stats["quality"]["by_domain"]) == {"health", "science", EVIL_DOMAIN}
    assert stats["quality"]["by_domain"][EVIL_DOMAIN] == {"count": 6, "mean": 0.25, **{
        f"p{p}": 0.25 for p in (5, 25, 50, 75, 95)}}
    assert stats["toxicity"]["column"] == "scores.toxicity.toxicity"
    assert stats["toxicity"]["overall"]["count"] == 50  # the synthetic rows were not scored
    feedback = stats["feedback"]
    assert (feedback["judged"], feedback["consensus"], feedback["reweighted"]) == \
        (6, {"good": 5, "needs_review": 1}, 5)
    assert feedback["sampling_weight"]["count"] == 55
    assert "6 rows (10.9%) carry an expert consensus" in card


def test_ledger_rates_equal_the_ledger(storage, card, stats):
    for dt in (DAY1, DAY2):
        commit, rejects = committed_ledger(storage, "curated", dt)
        real = rejects.filter(pc.invert(pc.fill_null(pc.equal(rejects.column("source"), "synthetic"), False)))
        report = ledger_report(real, dt, int(commit["dctp.ingested"]), 0)
        date = stats["ledger"]["dates"][dt]
        assert {o: date[o] for o in report.by_outcome} == report.by_outcome
        assert date["duplicate_rate"] == round(report.by_outcome["duplicate"] / report.ingested, 6)
    total = stats["ledger"]["total"]
    assert (total["ingested"], total["duplicate"], total["filtered"], total["quarantined"]) == (60, 4, 2, 4)
    assert (total["synthesized"], total["synthetic_rejected"]) == (6, 1)
    for outcome, n in (("duplicate", 4), ("filtered", 2), ("quarantined", 4), ("retracted", 0)):
        assert f"| {outcome} | {n} | {n / 60:.1%} |" in card
    assert f"| {DAY1} | 49 | {3 / 49:.1%} | {2 / 49:.1%} | {4 / 49:.1%} | 0.0% |" in card
    assert stats["ledger"]["by_reason"] == {"duplicate.exact_duplicate": 4, "quarantined.malformed_json": 4,
                                            "filtered.too_few_words": 2}


def test_lineage_lists_each_dates_run(card, stats):
    lineage = stats["lineage"]
    assert [(dt, c["version"], c["run_id"], c["mlflow_run_id"]) for dt, c in lineage.items()] == \
        [(DAY1, 1, "run-1", "m-1"), (DAY2, 2, "run-2", "m-2")]
    for dt, commit in lineage.items():
        assert f"| {dt} | {commit['version']} | {DAG} | {md(commit['run_id'])} | {commit['mlflow_run_id']} | " \
               f"{commit['config_hash']} |" in card
    assert CONFIG.config_hash() != CONFIG_DAY2.config_hash()
    assert f"config hashes: {CONFIG.config_hash()} ({DAY1}), {CONFIG_DAY2.config_hash()} ({DAY2})." in card


def test_license_notes_per_source(card):
    assert "| web | cc-by-4.0 | 34 |" in card and "| wiki | cc-by-sa-3.0 | 10 |" in card
    assert f"| {md(EVIL)} | not configured | 6 |" in card
    assert "synthetic rows are generated from the documents of these sources" in card


def test_strings_from_data_are_escaped(card):
    assert md(EVIL) == r"evil\|&lt;script&gt;alert(1)&lt;/script&gt;"
    assert md(EVIL_DOMAIN) == r"a\|b c"
    assert "<script>" not in card and EVIL not in card and EVIL_DOMAIN not in card
    body = card.split("\n---\n", 1)[1]
    tables = [block.splitlines() for block in body.split("\n\n") if block.startswith("|")]
    assert len(tables) >= 10
    for table in tables:  # every row keeps its header's cell count: no value broke out of its cell
        assert len({line.replace("\\|", "").count("|") for line in table}) == 1, table


def test_same_version_and_config_give_the_same_bytes(storage, card):
    assert build_card(storage, "curated", 2, CONFIG) == card
    assert build_card(storage, "curated", None, CONFIG).encode() == card.encode()
    assert json.dumps(card_stats(storage, "curated", 2, CONFIG)) == json.dumps(card_stats(storage, "curated", 2,
                                                                                             CONFIG))
    assert build_card(storage, "curated", 1, CONFIG) != card  # time travel: the first date only


def test_empty_version_renders(storage):
    stats = card_stats(storage, "curated", 0, CONFIG)  # version 0 created the table, empty
    assert (stats["rows"], stats["dates"], stats["quality"], stats["ledger"]["total"]["ingested"]) == (0, [], None, 0)
    meta = DatasetCard(render_card(stats, CONFIG)).data.to_dict()
    assert (meta["language"], meta["license"], meta["size_categories"]) == ([], "unknown", ["n<1K"])


def test_card_settings_reach_the_front_matter_and_body(stats):
    config = load_config(overrides={**LICENSED, "export.card": {
        "pretty_name": "Curated | v2", "task_categories": ["question-answering"],
        "annotations_creators": ["expert-generated"], "source_datasets": ["google/boolq"],
        "description": "Daily curated *text* for SFT."}})
    text = render_card(stats, config)
    meta = DatasetCard(text).data.to_dict()
    assert (meta["pretty_name"], meta["task_categories"], meta["annotations_creators"], meta["source_datasets"]) == (
        "Curated | v2", ["question-answering"], ["expert-generated"], ["google/boolq"])
    assert "# Curated \\| v2" in text and "Daily curated *text* for SFT." in text
