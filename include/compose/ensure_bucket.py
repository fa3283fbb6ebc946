#!/usr/bin/env python3
"""Create the bucket of an ``s3://bucket/prefix`` data root, with the credentials of the ``aws_default`` connection.

Usage (airflow-init in docker-compose.yaml)::

    DCTP_AWS_DEFAULT_CONN='{"conn_type": "aws", "login": ..., "password": ..., "extra": {"endpoint_url": ...}}' \\
        python include/compose/ensure_bucket.py s3://dctp/data

The connection JSON is the one airflow-init stores as ``aws_default``, so a bucket created here proves the DAGs'
connection reaches the store. An existing bucket is left as it is; a ``file://`` root needs nothing.
"""

from __future__ import annotations

import json
import os
import sys
from urllib.parse import urlparse


def bucket_of(data_root: str) -> str | None:
    """Return the bucket of an ``s3://`` root, None for any other scheme; ValueError for ``s3://`` with no bucket."""
    url = urlparse(data_root)
    if url.scheme != "s3":
        return None
    if not url.netloc:
        raise ValueError(f"data root {data_root!r} names no bucket (expected s3://bucket/prefix)")
    return url.netloc


def s3_client(conn_json: str):
    """Return a boto3 S3 client for an Airflow ``aws`` connection given as JSON."""
    import boto3

    conn = json.loads(conn_json)
    extra = conn.get("extra") or {}
    if isinstance(extra, str):
        extra = json.loads(extra)
    return boto3.client(
        "s3",
        endpoint_url=extra.get("endpoint_url"),
        aws_access_key_id=conn.get("login"),
        aws_secret_access_key=conn.get("password"),
        region_name=extra.get("region_name") or "us-east-1",
    )


def ensure_bucket(client, bucket: str) -> bool:
    """Create ``bucket`` unless it exists; return whether it was created."""
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
        return False
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
    client.create_bucket(Bucket=bucket)
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: ensure_bucket.py DATA_ROOT   (connection JSON in $DCTP_AWS_DEFAULT_CONN)", file=sys.stderr)
        return 2
    bucket = bucket_of(args[0])
    if bucket is None:
        print(f"ensure_bucket: {args[0]} is not on S3; nothing to create", file=sys.stderr)
        return 0
    created = ensure_bucket(s3_client(os.environ["DCTP_AWS_DEFAULT_CONN"]), bucket)
    print(f"ensure_bucket: bucket {bucket} {'created' if created else 'already exists'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
