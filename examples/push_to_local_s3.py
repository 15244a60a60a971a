"""Create a bucket on a local S3-compatible server and push modelfleet's example models to it.

Any S3-compatible server on this machine will do; for instance moto's, which the test extras
install (``pip install -e '.[dev]'``)::

    moto_server -H 127.0.0.1 -p 9000 &
    python examples/push_to_local_s3.py --endpoint-url http://127.0.0.1:9000

then serve them (``examples/fleet.toml`` serves the same bucket as a two-variant fleet)::

    AWS_ENDPOINT_URL=http://127.0.0.1:9000 AWS_ACCESS_KEY_ID=testing \\
    AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 \\
        modelfleet serve --model-source s3://modelfleet-examples/models/

The models are pushed as ``modelfleet push`` pushes them (each example folder packaged as a
``model.tar.gz``, uploaded all or nothing). Only the given endpoint is contacted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from urllib.parse import urlsplit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint-url", required=True, help="The S3-compatible server.")
    parser.add_argument("--bucket", default="modelfleet-examples")
    parser.add_argument("--prefix", default="models/")
    parser.add_argument("--access-key-id", default="testing")
    parser.add_argument("--secret-access-key", default="testing")
    parser.add_argument("--region", default="us-east-1")
    args = parser.parse_args()
    host = urlsplit(args.endpoint_url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("this example only talks to a server on this machine (127.0.0.1)")

    import boto3
    from botocore.exceptions import ClientError

    s3 = boto3.client(
        "s3",
        endpoint_url=args.endpoint_url,
        aws_access_key_id=args.access_key_id,
        aws_secret_access_key=args.secret_access_key,
        region_name=args.region,
    )
    try:
        s3.create_bucket(Bucket=args.bucket)
        print(f"created bucket {args.bucket}")
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
        print(f"bucket {args.bucket} exists")

    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": args.endpoint_url,
        "AWS_ACCESS_KEY_ID": args.access_key_id,
        "AWS_SECRET_ACCESS_KEY": args.secret_access_key,
        "AWS_REGION": args.region,
    }
    source = f"s3://{args.bucket}/{args.prefix}"
    modelfleet = [sys.executable, "-m", "modelfleet"]
    with tempfile.TemporaryDirectory(prefix="modelfleet-examples-") as scratch:
        made = Path(scratch) / "made"
        subprocess.run([*modelfleet, "examples", str(made)], check=True, capture_output=True)
        for archive in sorted(made.rglob("*.tar.gz")):
            folder = Path(scratch) / "folders" / archive.parent.name
            folder.mkdir(parents=True)
            with tarfile.open(archive) as tar:  # the examples come packaged: unpack to push
                tar.extractall(folder, filter="data")
            target = archive.parent.relative_to(made).as_posix()
            subprocess.run(
                [*modelfleet, "push", str(folder), target, "--source", source, "-q"],
                check=True,
                env=env,
            )
    print(f"list them with: modelfleet models --source {source}")


if __name__ == "__main__":
    main()
