"""Object-store sources beyond environment keys: S3 credentials from a profile of a shared
credentials file (the standard AWS chain, through boto3), against an S3-compatible server that
checks signatures; and Azure Blob sources against Azurite."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest

from modelfleet.config import Settings
from modelfleet.errors import SourceError
from modelfleet.source import ModelSource
from tests.artifacts import sklearn_artifact
from tests.azurite import Azurite
from tests.conftest import _AWS_VARIABLES
from tests.s3server import HOST, free_port
from tests.servers import process_server, thread_server

ROW = "0.1,0.2,0.3,0.4"
BUCKET = "fleet-models"


def _invoke(url: str, model: str) -> httpx.Response:
    headers = {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": model}
    return httpx.post(
        f"{url}/endpoints/default/invocations", content=ROW, headers=headers, timeout=60
    )


@pytest.fixture(scope="module")
def signing_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """moto's server in a child process that checks every request's signature against its own
    IAM (after the three unchecked calls that make the user, its key and its policy); yields
    its URL and the user's key."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("ab")
    argv = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
    log.close()
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # a connect, not a request: requests count towards the unchecked three
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto's server did not start") from None
                time.sleep(0.05)
        iam = boto3.client(
            "iam",
            endpoint_url=url,
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
            region_name="us-east-1",
        )
        iam.create_user(UserName="fleet")
        created = iam.create_access_key(UserName="fleet")["AccessKey"]
        policy = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
        iam.put_user_policy(
            UserName="fleet",
            PolicyName="models",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [policy]}),
        )
        key = {"id": created["AccessKeyId"], "secret": created["SecretAccessKey"]}
        s3 = boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id=key["id"],
            aws_secret_access_key=key["secret"],
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket=BUCKET)
        artifact = sklearn_artifact(seed=4, n_features=4, n_trees=2)
        s3.put_object(Bucket=BUCKET, Key="fleet/m/model.tar.gz", Body=artifact)
        yield url, key
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _profile_home(home: Path, key: dict[str, str]) -> Path:
    """A HOME whose ~/.aws files hold the profile ``fleet`` (the right key, a region) and the
    profile ``stale`` (a wrong secret)."""
    aws = home / ".aws"
    aws.mkdir(parents=True)
    (aws / "credentials").write_text(
        f"[fleet]\naws_access_key_id = {key['id']}\naws_secret_access_key = {key['secret']}\n"
        f"[stale]\naws_access_key_id = {key['id']}\naws_secret_access_key = not-the-secret\n"
    )
    (aws / "config").write_text("[profile fleet]\nregion = us-east-1\n")
    return home


def _profile_env(url: str, home: Path, profile: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _AWS_VARIABLES}
    env.update(HOME=str(home), AWS_ENDPOINT_URL=url, AWS_EC2_METADATA_DISABLED="true")
    if profile is not None:
        env["AWS_PROFILE"] = profile
    return env


def test_s3_credentials_from_a_profile_in_a_shared_credentials_file(
    signing_s3: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, key = signing_s3
    home = _profile_home(tmp_path / "home", key)
    args = ["--model-source", f"s3://{BUCKET}/fleet/", "--cache-dir", str(tmp_path / "cache")]
    env = _profile_env(url, home, "fleet")
    with process_server(args, env=env, log=tmp_path / "server.log") as server:
        answer = _invoke(server.url, "m/model.tar.gz")
        assert answer.status_code == 200, answer.text
        assert len(json.loads(answer.content)) == 1


def test_s3_profiles_that_cannot_sign_fail_clearly(
    signing_s3: tuple[str, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, key = signing_s3
    home = _profile_home(tmp_path / "home", key)
    for variable in _AWS_VARIABLES:
        monkeypatch.delenv(variable, raising=False)

    def source(profile: str | None) -> ModelSource:
        for name, value in _profile_env(url, home, profile).items():
            monkeypatch.setenv(name, value)
        if profile is None:
            monkeypatch.delenv("AWS_PROFILE", raising=False)
        return ModelSource(f"s3://{BUCKET}/fleet/", retries=0)

    assert source("fleet").stat("m/model.tar.gz").size > 0  # the same chain, in this process
    with pytest.raises(SourceError, match=r"privileges|Forbidden|403"):
        source("stale").stat("m/model.tar.gz")  # the profile's secret is used, and wrong
    with pytest.raises(SourceError, match="could not be found"):
        source("nobody")  # a profile no file defines fails when the source is made
    (home / ".aws" / "credentials").unlink()
    with pytest.raises(SourceError, match="no AWS credentials found"):
        source(None).stat("m/model.tar.gz")


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    server = Azurite(tmp_path_factory.mktemp("azurite") / "data")
    try:
        server.start()
    except RuntimeError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


def test_an_azure_source_serves_a_model_added_after_start(
    azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from azure.storage.blob import BlobServiceClient

    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = blobs.create_container("models")
    artifact = sklearn_artifact(seed=5, n_features=4, n_trees=2)
    container.upload_blob("fleet/first/model.tar.gz", artifact)
    for name, value in azurite.env().items():
        monkeypatch.setenv(name, value)
    settings = Settings(model_source="az://models/fleet/", cache_dir=tmp_path / "cache")
    with thread_server(settings) as server:
        assert _invoke(server.url, "first/model.tar.gz").status_code == 200
        missing = _invoke(server.url, "later/model.tar.gz")
        assert missing.status_code == 400
        assert "Could not find model" in missing.json()["message"]
        container.upload_blob("fleet/later/model.tar.gz", artifact)  # added while it serves
        later = _invoke(server.url, "later/model.tar.gz")
        assert later.status_code == 200, later.text
        assert later.content == _invoke(server.url, "first/model.tar.gz").content
    # a wrong account key is refused by the service, and said so
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=")
    with pytest.raises(SourceError, match=r"403|Forbidden|privileges"):
        ModelSource("az://models/fleet/", retries=0).stat("first/model.tar.gz")
