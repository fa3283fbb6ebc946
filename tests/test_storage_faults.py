"""Reading the pipeline's own Parquet files from S3 while responses are cut: an error to retry, never wrong rows."""

from __future__ import annotations

import pyarrow as pa
import pytest

from dctp_tasks.storage import S3Options, Storage
from tests.cluster import faulty_proxy
from tests.cluster.faulty_proxy import FaultyProxy
from tests.ingest.test_read_faults_s3 import _filesystem

SCHEMA = pa.schema([("n", pa.int64())])


@pytest.mark.parametrize("cut_after", [50, 200, 5_000])
def test_a_cut_read_of_a_staged_file_raises_a_transient_error(s3_bucket, moto_server, cut_after, monkeypatch):
    import sys

    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "dags"))
    from dctp_common.runtime import is_transient

    host, port = moto_server.removeprefix("http://").split(":")
    proxy = FaultyProxy((host, int(port)))
    direct = Storage(f"s3://{s3_bucket}/root", S3Options(endpoint_url=moto_server, access_key="testing",
                                                          secret_key="testing"))
    through = Storage(f"s3://{s3_bucket}/root", S3Options(endpoint_url=proxy.url, access_key="testing",
                                                           secret_key="testing"))
    through.fs = _filesystem(proxy.url)
    with direct.writer("staging/x", schema=SCHEMA) as writer:
        writer.write(pa.table({"n": list(range(50_000))}, schema=SCHEMA))
    monkeypatch.setattr(faulty_proxy, "CUT_AFTER", cut_after)
    try:
        proxy.fail("cut-reads", path=b"/staging/")
        with pytest.raises(OSError) as raised:
            through.read_table("staging/x")
        assert is_transient(raised.value), raised.value
        proxy.heal()
        assert through.read_table("staging/x").column("n").to_pylist() == list(range(50_000))
    finally:
        proxy.close()
