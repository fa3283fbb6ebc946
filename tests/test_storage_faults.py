"""Reading the pipeline's own Parquet files from S3 while responses are cut: an error to retry, never wrong rows.

With the bytes of a cut response pyarrow's Parquet reader either fails (a damaged transfer: transient) or, when its
buffer still held this file, reads the right rows; these tests fail if it ever returns other rows."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tests.cluster import faulty_proxy

SCHEMA = pa.schema([("n", pa.int64())])


@pytest.mark.parametrize("cut_after", [50, 200, 5_000])
def test_a_cut_read_of_a_staged_file_raises_a_transient_error(cutting, cut_after, monkeypatch):
    import sys

    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "dags"))
    from dctp_common.runtime import is_transient

    direct, through, proxy = cutting
    with direct.writer("staging/x", schema=SCHEMA) as writer:
        writer.write(pa.table({"n": list(range(50_000))}, schema=SCHEMA))
    monkeypatch.setattr(faulty_proxy, "CUT_AFTER", cut_after)
    proxy.fail("cut-reads", path=b"/staging/")
    try:
        # the bytes pyarrow hands back may be a freed buffer that held this very file: then they are right
        rows = through.read_table("staging/x").column("n").to_pylist()
    except OSError as exc:
        assert is_transient(exc), exc
        proxy.heal()
        rows = through.read_table("staging/x").column("n").to_pylist()
    assert proxy.refused > 0, "no read was cut"
    assert rows == list(range(50_000)), "a cut read returned rows that are not the file's"


@pytest.mark.parametrize("parts", [1, 3])
def test_an_intact_download_passes_its_etag_check_single_or_multipart(cutting, parts):
    import io
    import os

    import boto3
    from boto3.s3.transfer import TransferConfig

    direct, through, _ = cutting
    data = os.urandom(parts * (5 << 20) - 1234)
    bucket, _, key = direct.path("landing", "web", "dt=2026-01-01", "big.bin").partition("/")
    client = boto3.client("s3", endpoint_url=direct.s3.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.upload_fileobj(io.BytesIO(data), bucket, key,
                          Config=TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20))
    etag = client.head_object(Bucket=bucket, Key=key)["ETag"]
    assert etag.strip('"').endswith("-3") if parts == 3 else "-" not in etag

    assert through.download_verified(f"{bucket}/{key}").read() == data
