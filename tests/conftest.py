"""Shared fixtures: a real S3-compatible server (moto) on a free loopback port."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from tests.s3server import MotoS3

FAKE_KEY_ID = "testing-key-id"
FAKE_SECRET = "testing-secret-key"
REGION = "us-east-1"

_AWS_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_ALLOW_HTTP",
    "AWS_SKIP_SIGNATURE",
)


@pytest.fixture(scope="session", autouse=True)
def _state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Servers of the session never read or lock this machine's own control-plane state
    (``~/.local/state/modelfleet``); a test of the control plane gives its own folder."""
    folder = tmp_path_factory.mktemp("modelfleet-state")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MODELFLEET_STATE_DIR", str(folder))
        yield


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 for the whole session; yields its endpoint URL."""
    server = MotoS3().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: str) -> Iterator[tuple[Any, str]]:
    """A fresh, uniquely named bucket; yields (boto3 S3 client, bucket name)."""
    client = boto3.client(
        "s3",
        endpoint_url=s3_server,
        aws_access_key_id=FAKE_KEY_ID,
        aws_secret_access_key=FAKE_SECRET,
        region_name=REGION,
    )
    bucket = f"modelfleet-test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=bucket)
    yield client, bucket
    client.close()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, s3_server: str) -> str:
    """Point the AWS environment at the moto server (and clear the rest); returns its URL."""
    for variable in _AWS_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_REGION", REGION)
    return s3_server


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """A head node (0 CPUs) and 3 worker nodes (1 CPU each) on 127.0.0.1, for the session.

    Ray starts only in a loopback-only network namespace (``scripts/test`` provides one):
    elsewhere these tests are skipped, and under CI they fail instead of passing unseen.
    """
    import os

    from tests.raycluster import RayCluster, loopback_only

    if not loopback_only():
        reason = "Ray tests run only in a loopback-only network namespace (bash scripts/test)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    import ray

    cluster = RayCluster(workers=3)
    ray.init(address=cluster.address, namespace="modelfleet-tests", log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
