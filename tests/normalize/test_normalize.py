from __future__ import annotations

import pyarrow as pa
import pytest

from dctp_tasks.config import NormalizeConfig, load_config
from dctp_tasks.normalize import identify_languages, normalize_day, normalize_texts
from dctp_tasks.records import CORE_SCHEMA, NORMALIZED_SCHEMA
from dctp_tasks.storage import Storage
from tests.conftest import make_table, publish_stage, staged
from tests.conftest import rejects as staged_drops

DAG = "dag"
DT = "2026-03-01"

SENTENCES = {
    "en": "The weather was lovely this morning, so we walked along the river to the old market.",
    "fr": "Le temps était magnifique ce matin, alors nous avons marché le long de la rivière jusqu'au marché.",
    "de": "Das Wetter war heute Morgen herrlich, also sind wir am Fluss entlang zum alten Markt gelaufen.",
    "es": "El tiempo era precioso esta mañana, así que caminamos junto al río hasta el viejo mercado.",
}


@pytest.mark.parametrize(("raw", "expected"), [
    pytest.param("cafÃ©", "café", id="mojibake"),
    pytest.param("Fish &amp; chips", "Fish & chips", id="html_entity"),
    pytest.param("e\u0301te\u0301", "\u00e9t\u00e9", id="nfd_to_nfc"),
    pytest.param("a\x00b\x07c\x1bd\x7fe\u200bf\ufeffg", "abcdefg", id="control_and_zero_width_removed"),
    pytest.param("one\r\ntwo\rthree\u2028four", "one\ntwo\nthree\nfour", id="line_breaks_to_newline"),
    pytest.param("a\u00a0b\t\tc    d\u3000e", "a b c d e", id="horizontal_space_collapsed"),
    pytest.param("para one\n\n\n\n\npara two", "para one\n\npara two", id="newline_runs_to_one_blank_line"),
    pytest.param("para one\n\npara two", "para one\n\npara two", id="paragraph_break_kept"),
    pytest.param("line one\nline two", "line one\nline two", id="single_newline_kept"),
    pytest.param("line one  \n \n \n  line two", "line one\n\nline two", id="spaces_around_newlines_dropped"),
    pytest.param("  \n\t padded text \n  ", "padded text", id="trimmed"),
    pytest.param("don\u2019t", "don\u2019t", id="curly_quotes_kept_by_default"),
    pytest.param("", "", id="empty"),
])
def test_normalize_texts(raw, expected):
    assert normalize_texts(pa.array([raw]), NormalizeConfig()).to_pylist() == [expected]


def test_normalize_texts_keeps_nulls_and_order_in_a_chunked_array():
    texts = pa.chunked_array([["cafÃ©", None], ["  plain  "]])

    assert normalize_texts(texts, NormalizeConfig()).to_pylist() == ["café", None, "plain"]


def test_fix_unicode_off_leaves_mojibake():
    assert normalize_texts(pa.array(["cafÃ©"]), NormalizeConfig(fix_unicode=False)).to_pylist() == ["cafÃ©"]


def test_uncurl_quotes_on_straightens_quotes():
    cfg = NormalizeConfig(uncurl_quotes=True)

    assert normalize_texts(pa.array(["don\u2019t \u201cquote\u201d"]), cfg).to_pylist() == ['don\'t "quote"']


def test_identify_languages_on_clear_sentences():
    langs, scores = identify_languages(pa.array(list(SENTENCES.values()) + ["", None]))

    assert langs.to_pylist() == list(SENTENCES) + [None, None]
    assert all(s > 0.5 for s in scores.to_pylist()[:4])
    assert scores.to_pylist()[4:] == [0.0, 0.0]
    assert scores.type == pa.float32()


# -- normalize_day over a staged ingest dataset ------------------------------------------------------------------

@pytest.fixture
def storage(tmp_path) -> Storage:
    return Storage(f"file://{tmp_path}")


def stage_ingest(storage: Storage, table: pa.Table, drops: list[tuple] = ()) -> None:
    publish_stage(storage, DAG, DT, "ingest", table.cast(CORE_SCHEMA), drops)


def output(storage: Storage) -> pa.Table:
    return staged(storage, DAG, DT, "normalize")


def read_rejects(storage: Storage, dt: str) -> pa.Table:
    return staged_drops(storage, DAG, dt)


def config(**overrides):
    return load_config(overrides={"normalize.workers": 1, **overrides})


@pytest.mark.parametrize(("min_chars", "max_chars"), [(10, 60), (5, 100), (50, 200), (0, 6)])
def test_length_filter_drops_too_short_and_too_long_with_detail(storage, min_chars, max_chars):
    lengths = [4, 5, 6, 10, 30, 59, 60, 61, 100, 150]
    # Padding spaces are trimmed before lengths are measured.
    stage_ingest(storage, make_table([" " + "x" * n + "  " for n in lengths]))

    result = normalize_day(storage, config(**{"normalize.min_chars": min_chars, "normalize.max_chars": max_chars}),
                           DAG, DT)

    short = [n for n in lengths if n < min_chars]
    long = [n for n in lengths if n > max_chars]
    kept = [n for n in lengths if min_chars <= n <= max_chars]
    assert [len(t) for t in output(storage).column("text").to_pylist()] == kept
    rejects = read_rejects(storage, DT).to_pylist()
    assert sorted((r["reason"], r["detail"]) for r in rejects) == sorted(
        [("too_short", f"chars={n}<{min_chars}") for n in short] + [("too_long", f"chars={n}>{max_chars}")
                                                                     for n in long])
    by_doc = {r["doc_id"]: r for r in rejects}
    assert set(by_doc) == {f"t/{i}" for i, n in enumerate(lengths) if n < min_chars or n > max_chars}
    assert all(r["outcome"] == "filtered" and r["stage"] == "normalize" and r["source"] == "t" for r in rejects)
    assert (result.total, result.kept) == (len(lengths), len(kept))
    assert result.dropped_by_reason == {k: v for k, v in (("too_short", len(short)), ("too_long", len(long))) if v}
    assert result.total == result.kept + result.dropped


def test_length_is_measured_after_normalization(storage):
    # 12 visible characters, but 40 before whitespace collapsing and entity repair.
    stage_ingest(storage, make_table(["a &amp;                b          c\n\n\n\n\nd"]))

    normalize_day(storage, config(**{"normalize.min_chars": 13}), DAG, DT)

    assert read_rejects(storage, DT).column("detail").to_pylist() == ["chars=10<13"]


def test_kept_rows_have_lang_normalized_text_and_a_lineage_step(storage):
    texts = [SENTENCES[lang].replace(" ", "  ") for lang in ("en", "fr", "de", "es")]
    stage_ingest(storage, make_table(texts, doc_id=["w/en", "w/fr", "w/de", "w/es"]))

    result = normalize_day(storage, config(), DAG, DT)

    table = output(storage)
    assert table.schema == NORMALIZED_SCHEMA
    assert table.column("doc_id").to_pylist() == ["w/en", "w/fr", "w/de", "w/es"]
    assert table.column("lang").to_pylist() == ["en", "fr", "de", "es"]
    assert table.column("text").to_pylist() == [SENTENCES[lang] for lang in ("en", "fr", "de", "es")]
    assert all(0.5 < s <= 1.0 for s in table.column("lang_score").to_pylist())
    assert [[s["name"] for s in row["steps"]] for row in table.column("lineage").to_pylist()] == [["normalize"]] * 4
    assert result.as_dict()["kept"] == 4 and result.dropped == 0


def test_other_columns_pass_through_unchanged(storage):
    table = make_table([SENTENCES["en"]], source=["forum"], domain=["forum"], meta=['{"k": 1}'],
                       sampling_weight=[2.5])
    stage_ingest(storage, table)

    normalize_day(storage, config(), DAG, DT)

    row = output(storage).to_pylist()[0]
    assert (row["source"], row["domain"], row["meta"], row["sampling_weight"]) == ("forum", "forum", '{"k": 1}', 2.5)


def test_rerun_replaces_its_rejects_but_not_other_stages(storage):
    stage_ingest(storage, make_table(["short", SENTENCES["en"]]), [("web/quarantine:x:1", "quarantined",
                                                                     "malformed_json")])

    normalize_day(storage, config(), DAG, DT)
    normalize_day(storage, config(), DAG, DT)

    assert sorted(read_rejects(storage, DT).column("reason").to_pylist()) == ["malformed_json", "too_short"]


def _many_texts(n: int) -> list[str]:
    base = list(SENTENCES.values())
    extras = ["cafÃ© &amp; crème\r\n\r\n\r\nbrûlée", "tiny", "x" * 300, "  spaced\t\tout  text  " * 4]
    return [f"{base[i % 4]} ({i}) {extras[i % len(extras)]}" if i % 5 else extras[i % len(extras)]
            for i in range(n)]


def test_one_worker_and_a_process_pool_give_identical_output(storage, tmp_path):
    # batch_size=7 over 40 rows: 6 batches, so two workers really run the pool path.
    table = make_table(_many_texts(40))
    other = Storage(f"file://{tmp_path / 'pool'}")
    for target in (storage, other):
        stage_ingest(target, table)
    overrides = {"batch_size": 7, "normalize.max_chars": 200}

    serial = normalize_day(storage, config(**overrides, **{"normalize.workers": 1}), DAG, DT)
    pooled = normalize_day(other, config(**overrides, **{"normalize.workers": 2}), DAG, DT)

    assert pooled.extra["workers"] == 2
    assert output(storage).to_pylist() == output(other).to_pylist()
    assert read_rejects(storage, DT).to_pylist() == read_rejects(other, DT).to_pylist()
    assert (serial.total, serial.kept, serial.dropped_by_reason) == (pooled.total, pooled.kept,
                                                                     pooled.dropped_by_reason)
    assert serial.total == 40 and 0 < serial.kept < 40
    assert set(serial.dropped_by_reason) == {"too_short", "too_long"}


def test_empty_input_writes_an_empty_dataset(storage):
    stage_ingest(storage, make_table([]))

    result = normalize_day(storage, config(), DAG, DT)

    assert (result.total, result.kept) == (0, 0)
    assert output(storage).num_rows == 0
    assert output(storage).schema == NORMALIZED_SCHEMA
