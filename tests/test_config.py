from __future__ import annotations

import pydantic
import pytest
import yaml

from dctp_tasks.config import DEFAULT_CONFIG_PATH, DEFAULT_FIELDS, PipelineConfig, SourceConfig, load_config


def test_defaults_load_from_the_packaged_yaml():
    config = load_config()
    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())

    assert config.batch_size == raw["batch_size"] == 10_000
    assert config.normalize.min_chars == raw["normalize"]["min_chars"]
    assert config.ingest.max_quarantine_ratio == raw["ingest"]["max_quarantine_ratio"]
    assert set(config.ingest.sources) == set(raw["ingest"]["sources"])
    assert config.ingest.sources["articles_db"].postgres.table == "dctp_demo_articles"
    assert config.ingest.sources["articles_db"].enabled is False


def test_dctp_config_env_points_at_another_file(tmp_path, monkeypatch):
    path = tmp_path / "other.yaml"
    path.write_text("batch_size: 7\nnormalize: {min_chars: 3}\n")
    monkeypatch.setenv("DCTP_CONFIG", str(path))

    config = load_config()

    assert (config.batch_size, config.normalize.min_chars) == (7, 3)
    assert config.normalize.max_chars == 100_000  # class default where the file is silent


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_dotted_overrides_apply_and_none_is_ignored():
    config = load_config(overrides={
        "normalize.min_chars": 10,
        "normalize.max_chars": None,
        "ingest.include_sources": ["forum"],
        "export.dataset_name": None,
    })

    assert config.normalize.min_chars == 10
    assert config.normalize.max_chars == 100_000
    assert config.ingest.include_sources == ["forum"]
    assert config.export.dataset_name == "curated"


@pytest.mark.parametrize("key", ["normalize.min_char", "batchsize", "ingest.sources.web.feilds", "tracking.url"])
def test_unknown_keys_are_rejected_naming_the_key(key):
    with pytest.raises(pydantic.ValidationError, match=r"Extra inputs are not permitted") as err:
        load_config(overrides={key: 1})

    assert key.rsplit(".", 1)[-1] in str(err.value)


def test_override_through_a_scalar_is_rejected():
    with pytest.raises(ValueError, match="batch_size"):
        load_config(overrides={"batch_size.rows": 5})


@pytest.mark.parametrize(("min_chars", "max_chars", "ok"), [(50, 49, False), (50, 50, True), (0, 1, True)])
def test_min_chars_may_not_exceed_max_chars(min_chars, max_chars, ok):
    overrides = {"normalize.min_chars": min_chars, "normalize.max_chars": max_chars}
    if ok:
        assert load_config(overrides=overrides).normalize.min_chars == min_chars
    else:
        with pytest.raises(pydantic.ValidationError, match=f"min_chars={min_chars} exceeds max_chars={max_chars}"):
            load_config(overrides=overrides)


@pytest.mark.parametrize(("key", "value"), [("ingest.max_quarantine_ratio", 1.5), ("batch_size", 0),
                                            ("export.validation_fraction", 0.9)])
def test_out_of_range_values_are_rejected(key, value):
    with pytest.raises(pydantic.ValidationError, match=key.rsplit(".", 1)[-1]):
        load_config(overrides={key: value})


def test_source_field_map_fills_defaults():
    assert SourceConfig().field_map() == {name: [column] for name, column in DEFAULT_FIELDS.items()}


def test_source_field_map_overrides_and_joins_columns():
    source = SourceConfig(fields={"text": ["title", "description"], "doc_id": "article_id"})

    fields = source.field_map()

    assert fields["text"] == ["title", "description"]
    assert fields["doc_id"] == ["article_id"]
    assert fields["created_at"] == ["created_at"]
    assert source.join_with == "\n\n"


def test_packaged_news_source_joins_title_and_description():
    news = load_config().ingest.source("news")

    assert news.field_map()["text"] == ["title", "description"]
    assert news.field_map()["domain"] == ["category"]


def test_unconfigured_source_gets_the_default_mapping():
    assert load_config().ingest.source("brand_new").field_map()["text"] == ["text"]


def test_unknown_record_field_in_a_mapping_is_rejected():
    with pytest.raises(pydantic.ValidationError, match=r"unknown record field\(s\) \['body'\]"):
        SourceConfig(fields={"body": "text"})


def test_postgres_source_accepts_schema_alias():
    source = SourceConfig.model_validate({"postgres": {"table": "t", "schema": "raw"}})

    assert source.postgres.schema_name == "raw"
    assert source.postgres.timestamp_column == "created_at"


def test_config_hash_is_stable():
    assert load_config().config_hash() == load_config().config_hash()
    assert len(load_config().config_hash()) == 16


@pytest.mark.parametrize(("key", "value"), [("normalize.min_chars", 51), ("ingest.include_sources", ["web"]),
                                            ("ingest.sources.forum.join_with", " "), ("batch_size", 9_999)])
def test_config_hash_changes_when_a_value_changes(key, value):
    assert load_config(overrides={key: value}).config_hash() != load_config().config_hash()


def test_config_hash_ignores_how_the_value_was_given():
    from_overrides = load_config(overrides={"normalize.min_chars": 10})
    data = load_config().model_dump(mode="json", by_alias=True)
    data["normalize"]["min_chars"] = 10

    assert PipelineConfig.model_validate(data).config_hash() == from_overrides.config_hash()


def test_flat_gives_dotted_string_params():
    flat = load_config().flat()

    assert flat["normalize.min_chars"] == "50"
    assert flat["export.dataset_name"] == "curated"
    assert flat["ingest.sources.news.fields.text"] == '["title", "description"]'


@pytest.mark.parametrize("key", ["ingest.sources.articles_db.postgres.conn_id", "tracking.tracking_uri",
                                 "dedup_semantic.model", "quality.scorers.toxicity.checkpoint", "export.dataset_name",
                                 "quality", "ingest.sources"])
def test_a_run_may_not_override_deployment_settings(key):
    from dctp_tasks.config import check_run_overrides

    with pytest.raises(ValueError, match=r"config_overrides may not change .*quality\.thresholds"):
        check_run_overrides({key: "anything"})


def test_a_run_may_override_tuning_keys():
    from dctp_tasks.config import check_run_overrides

    overrides = {"quality.scorers.perplexity.enabled": False, "quality.scorers.toxicity.batch_size": 8,
                 "quality.thresholds": {"toxicity.toxic": 0.9}, "export.test_fraction": 0.1, "batch_size": 100,
                 "dedup_semantic.domain_thresholds": {"news": 0.92}, "quality.enabled": False}
    check_run_overrides(overrides)
    assert load_config(overrides=overrides).export.test_fraction == 0.1


def test_config_overrides_from_the_trigger_form_are_checked_before_anything_runs():
    import sys

    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "dags"))
    from dctp_common.runtime import resolve_config

    with pytest.raises(ValueError, match="may not change 'ingest.sources.x.postgres.table'"):
        resolve_config({"config_overrides": {"ingest.sources.x.postgres.table": "users; DROP TABLE users"}})
    assert resolve_config({"config_overrides": {"normalize.min_chars": 7}}).normalize.min_chars == 7


def test_model_batch_sizes_default_to_auto_and_take_numbers_per_run():
    from dctp_tasks.config import check_run_overrides

    config = load_config()
    assert config.dedup_semantic.batch_size == config.dedup_semantic.token_budget == "auto"
    assert config.quality.scorers["perplexity"]["batch_size"] == "auto"
    overrides = {"dedup_semantic.token_budget": 20_000, "dedup_semantic.batch_size": 512,
                 "quality.scorers.perplexity.token_budget": 65_536}
    check_run_overrides(overrides)
    tuned = load_config(overrides=overrides)
    assert (tuned.dedup_semantic.batch_size, tuned.dedup_semantic.token_budget) == (512, 20_000)
    assert tuned.quality.scorers["perplexity"]["token_budget"] == 65_536
    for bad in (0, -5, "big", 1.5):
        with pytest.raises(ValueError, match="token_budget"):
            load_config(overrides={"dedup_semantic.token_budget": bad})
