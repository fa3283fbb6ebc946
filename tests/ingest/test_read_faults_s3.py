"""A landing file whose S3 connection is cut mid-download fails ingest (to be retried); it is never quarantined.

The data root is a real S3 API (moto) behind a TCP proxy that resets every connection once a set number of
response bytes has passed, and refuses new ones until healed: an S3 outage in the middle of a multi-MB file.
"""

from __future__ import annotations

import gzip
import io
import random
import re

import orjson
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from dctp_tasks.config import load_config
from dctp_tasks.ingest import ingest_day
from dctp_tasks.ingest.readers import read_file
from dctp_tasks.publish import is_published
from dctp_tasks.staging import stage_rejects, stage_rows
from dctp_tasks.storage import S3Options, Storage, staging_dir
from tests.cluster.faulty_proxy import FaultyProxy

DAG = "dag"
DT = "2026-03-01"
ROWS = 24_000
CUT_AFTER = 1_500_000
"""Response bytes the proxy passes before it cuts: past the first read, well before the end of every file."""


class CuttingProxy(FaultyProxy):
    """A ``FaultyProxy`` that starts failing (``reset``) by itself once ``cut_after`` response bytes have passed."""

    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__(target)
        self.cut_after: int | None = None
        self.passed = 0

    def arm(self, cut_after: int) -> None:
        self.passed, self.cut_after = 0, cut_after

    def heal(self) -> None:
        self.cut_after = None
        super().heal()

    def _passed(self, size: int) -> None:
        self.passed += size
        if self.cut_after is not None and self.passed >= self.cut_after:
            self.cut_after = None
            self.fail("reset")


@pytest.fixture
def proxy(moto_server):
    host, port = moto_server.removeprefix("http://").split(":")
    proxy = CuttingProxy((host, int(port)))
    yield proxy
    proxy.close()


def _filesystem(endpoint: str) -> pafs.S3FileSystem:
    # Two attempts, not the production five: the outage lasts until heal(), so retries only add seconds.
    return pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1", scheme="http",
                             endpoint_override=endpoint.removeprefix("http://"), connect_timeout=2,
                             request_timeout=10, retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=2))


@pytest.fixture
def storages(s3_bucket, moto_server, proxy) -> tuple[Storage, Storage]:
    """The data root seen straight (to set up and check) and through the proxy (what ingest reads)."""
    direct = Storage(f"s3://{s3_bucket}/root", S3Options(endpoint_url=moto_server, access_key="testing",
                                                          secret_key="testing"))
    through = Storage(f"s3://{s3_bucket}/root", S3Options(endpoint_url=proxy.url, access_key="testing",
                                                           secret_key="testing"))
    through.fs = _filesystem(proxy.url)
    return direct, through


def _rows() -> list[dict]:
    rng = random.Random(11)
    vocabulary = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 10))) for _ in range(20_000)]
    return [{"id": str(i), "text": " ".join(rng.choices(vocabulary, k=40))} for i in range(ROWS)]


def _landing_file(kind: str, rows: list[dict]) -> tuple[str, bytes]:
    if kind == "jsonl.gz":
        return "big.jsonl.gz", gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in rows), 6)
    if kind == "csv.gz":
        text = "id,text\n" + "".join(f"{r['id']},{r['text']}\n" for r in rows)
        return "big.csv.gz", gzip.compress(text.encode(), 6)
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink, row_group_size=3_000, compression="none")
    return "big.parquet", sink.getvalue()


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return _rows()


@pytest.mark.parametrize("kind", ["jsonl.gz", "csv.gz", "parquet"])
def test_connection_cut_mid_file_raises_and_quarantines_nothing_then_a_rerun_reads_every_row(storages, proxy, rows,
                                                                                              kind):
    direct, through = storages
    name, data = _landing_file(kind, rows)
    assert len(data) > 2 * CUT_AFTER, f"{name} is {len(data)} bytes: too small to be cut mid-way"
    path = direct.path("landing", "web", f"dt={DT}", name)
    direct.write_bytes(path, data)
    config = load_config()  # the default 5 % quarantine limit: a cut file must not count as bad input at all

    # The reader itself: the storage's own error, before any row: on S3 a file is fetched and checked whole before
    # it is parsed, so no BadRow can come of bytes it could not fetch.
    proxy.arm(CUT_AFTER)
    events: list = []
    with pytest.raises(OSError) as raised:
        for event in read_file(through, path, batch_size=1_000):
            events.append(event)
    assert "AWS Error" in str(raised.value)
    assert events == []
    assert proxy.refused > 0  # the retry met the outage too
    proxy.heal()

    # The whole stage: the run fails (Airflow retries it) and publishes nothing, so no quarantine row exists.
    proxy.arm(CUT_AFTER)
    with pytest.raises(OSError):
        ingest_day(through, config, DAG, DT)
    proxy.heal()
    assert not is_published(direct, staging_dir(DAG, DT, "ingest"))

    result = ingest_day(through, config, DAG, DT)

    assert (result.total, result.kept, result.dropped) == (ROWS, ROWS, 0)
    assert stage_rejects(direct, DAG, DT, "ingest").num_rows == 0
    kept = direct.read_table(stage_rows(direct, DAG, DT, "ingest"), columns=["doc_id"]).column("doc_id")
    assert sorted(kept.to_pylist()) == sorted(f"web/{r['id']}" for r in rows)


@pytest.mark.parametrize("cut_after", [50, 200, 5_000])
def test_a_response_cut_anywhere_is_never_read_as_the_file(cutting, rows, cut_after, monkeypatch):
    """Cut in the status line or the headers, pyarrow hands back whatever its buffer holds, without an error: the
    download is checked against the stored object's size and ETag, so ingest either raises (and publishes nothing)
    or, when the buffer happened to hold the very bytes (a freed buffer of the same file), ingests them whole:
    never a row that is not the file's."""
    from tests.cluster import faulty_proxy

    direct, through, proxy = cutting
    name, data = _landing_file("jsonl.gz", rows[:2_000])
    direct.write_bytes(direct.path("landing", "web", f"dt={DT}", name), data)
    monkeypatch.setattr(faulty_proxy, "CUT_AFTER", cut_after)
    proxy.fail("cut-reads", path=b"/landing/")
    try:
        result = ingest_day(through, load_config(), DAG, DT)
    except OSError as exc:
        assert re.search("AWS Error|damaged in transit|was cut", str(exc)), exc
        assert not is_published(direct, staging_dir(DAG, DT, "ingest"))
        proxy.heal()
        result = ingest_day(through, load_config(), DAG, DT)
    assert proxy.refused > 0, "the download was never cut"
    assert (result.total, result.kept, result.dropped) == (2_000, 2_000, 0)
    assert stage_rejects(direct, DAG, DT, "ingest").num_rows == 0
