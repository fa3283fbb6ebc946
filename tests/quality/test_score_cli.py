"""``dctp score``: score a local JSONL, CSV or Parquet file; the input's columns plus ``{scorer}.{field}`` columns."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml

from dctp_tasks.cli import main
from dctp_tasks.config import DEFAULT_CONFIG_PATH
from dctp_tasks.quality.heuristics import HeuristicsScorer
from dctp_tasks.quality.toxicity import ToxicityScorer
from tests.conftest import make_table

ROWS = {
    "id": [11, 12, 13, 14, 15],
    "body": ["You are a stupid idiot and everyone hates you, shut up.",
             "Rivers carry water from the mountains to the sea through valleys and plains, and farms along their "
             "banks depend on the spring floods for fertile soil.",
             "The committee approved the budget after a short debate. Members thanked the staff for their work.",
             "Go to hell, you pathetic loser. Nobody wants you here.",
             "Thank you for the helpful review of my edit; I fixed the citation you pointed out."],
    "source": ["forum", "web", "news", "forum", "web"],
    "rating": [0.5, 1.5, 2.5, 3.5, 4.5],
}
TOXIC_ROWS, CLEAN_ROWS = [0, 3], [1, 2, 4]


def write_input(path, rows: dict = ROWS) -> None:
    table = pa.table(rows)
    name = path.name
    if name.endswith(".parquet"):
        pq.write_table(table, path)
    elif name.endswith(".csv"):
        pacsv.write_csv(table, path)
    else:
        lines = "".join(json.dumps(dict(zip(rows, values))) + "\n" for values in zip(*rows.values())).encode()
        path.write_bytes(gzip.compress(lines) if name.endswith(".gz") else lines)


@pytest.fixture
def root(tmp_path, monkeypatch) -> str:
    monkeypatch.delenv("DCTP_CONFIG", raising=False)
    return (tmp_path / "data").as_uri()


def expected_heuristics() -> dict[str, np.ndarray]:
    return HeuristicsScorer().score(make_table(ROWS["body"], source=ROWS["source"]).to_batches()[0])


@pytest.mark.parametrize("suffix", ["jsonl", "jsonl.gz", "csv", "parquet"])
def test_scores_every_input_format_into_parquet(tmp_path, root, capsys, suffix):
    source, out = tmp_path / f"in.{suffix}", tmp_path / "out" / "scored.parquet"
    write_input(source)
    assert main(["--root", root, "score", str(source), "--out", str(out), "--scorers", "toxicity,heuristics",
                 "--text-column", "body", "--batch-size", "2"]) == 0

    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith("scored 5 rows with toxicity, heuristics in ")
    table = pq.read_table(out)
    heuristics = [f"heuristics.{f.name}" for f in HeuristicsScorer().fields]
    assert table.column_names == [*ROWS, "toxicity.toxicity", *heuristics]
    assert table.num_rows == 5
    assert table.select(list(ROWS)).to_pydict() == ROWS, "input columns pass through unchanged, in order"
    assert table.schema.field("toxicity.toxicity").type == pa.float32()

    toxicity = table.column("toxicity.toxicity").to_numpy()
    threshold = ToxicityScorer().rules[0].threshold
    assert (toxicity[TOXIC_ROWS] > threshold).all() and (toxicity[CLEAN_ROWS] < 0.3).all(), toxicity
    # batches of 2 give each row its own scores, as one pass over all rows does
    for name, values in expected_heuristics().items():
        np.testing.assert_array_equal(table.column(f"heuristics.{name}").to_numpy(), values, err_msg=name)


def test_csv_output_and_default_scorers_from_the_config(tmp_path, root, monkeypatch, capsys):
    settings = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    settings["quality"] = {"scorers": {"credibility": {"priors": {"forum": 0.3}}, "heuristics": {},
                                       "toxicity": {"enabled": False}}}
    config = tmp_path / "dctp.yaml"
    config.write_text(yaml.safe_dump(settings))
    monkeypatch.setenv("DCTP_CONFIG", str(config))
    source, out = tmp_path / "in.parquet", tmp_path / "scored.csv"
    write_input(source, {"text": ROWS["body"], "source": ROWS["source"]})

    assert main(["--root", root, "score", str(source), "--out", str(out)]) == 0
    assert "with credibility, heuristics in" in capsys.readouterr().out
    table = pacsv.read_csv(out)
    assert table.column_names[:3] == ["text", "source", "credibility.credibility"]
    assert not any(c.startswith("toxicity.") for c in table.column_names), "disabled in the config: not run"
    # credibility reads the input's `source`: forum has its own prior, the rest the default
    assert table.column("credibility.credibility").to_pylist() == pytest.approx([0.3, 0.5, 0.5, 0.3, 0.5])
    assert table.column("credibility.credibility_provenance").to_pylist()[:2] == ["config:priors.forum",
                                                                                  "config:default"]
    np.testing.assert_allclose(table.column("heuristics.word_count").to_numpy(),
                               expected_heuristics()["word_count"])

    # Named, a scorer runs even where the config switches it off.
    assert main(["--root", root, "score", str(source), "--out", str(out), "--scorers", "toxicity"]) == 0
    assert pacsv.read_csv(out).column_names == ["text", "source", "toxicity.toxicity"]


def test_an_unknown_scorer_is_refused_with_the_valid_ones(tmp_path, root, capsys):
    source, out = tmp_path / "in.csv", tmp_path / "out.parquet"
    write_input(source)
    assert main(["--root", root, "score", str(source), "--out", str(out), "--scorers", "toxicity,toxic",
                 "--text-column", "body"]) == 2
    err = capsys.readouterr().err
    assert "unknown scorer toxic; valid scorers are heuristics, language, pii, perplexity, toxicity" in err
    assert not out.exists()


def test_a_missing_text_column_names_the_columns_present(tmp_path, root, capsys):
    source, out = tmp_path / "in.jsonl", tmp_path / "out.parquet"
    write_input(source)
    assert main(["--root", root, "score", str(source), "--out", str(out), "--scorers", "heuristics"]) == 2
    assert "no text column 'text' (--text-column); its columns are ['id', 'body', 'source', 'rating']" \
        in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(("name", "message"), [
    ("in.txt", "unknown format; use .jsonl, .jsonl.gz, .csv or .parquet"),
    ("missing.csv", "does not exist"),
])
def test_bad_inputs_are_named(tmp_path, root, capsys, name, message):
    source = tmp_path / name
    if name.endswith(".txt"):
        source.write_text("hello\n")
    assert main(["--root", root, "score", str(source), "--out", str(tmp_path / "o.parquet")]) == 2
    assert message in capsys.readouterr().err


def test_the_output_format_comes_from_its_extension(tmp_path, root, capsys):
    source = tmp_path / "in.csv"
    write_input(source)
    assert main(["--root", root, "score", str(source), "--out", str(tmp_path / "o.xlsx"), "--text-column",
                 "body"]) == 2
    assert "use one of ('.parquet', '.csv')" in capsys.readouterr().err
