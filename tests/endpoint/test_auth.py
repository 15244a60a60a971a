"""Caller authentication: boto3 with and without the right key, requests signed by botocore's own
signer and then replayed, tampered or scoped wrongly, bearer tokens, and the refusal to serve an
open port without authentication."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore import UNSIGNED
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from click.testing import CliRunner

from modelfleet.cli import main
from modelfleet.config import Settings
from tests.artifacts import sklearn_source
from tests.servers import ThreadServer, thread_server

ROW = "0.1,0.2,0.3,0.4"
ALLOWED = ("AKIDALLOWED0001", "secret-of-the-allowed-key")
OTHER = ("AKIDOTHER000002", "secret-of-the-other-key")
ADMIN = ("AKIDADMIN000003", "secret-of-the-admin-key")
TOKEN = "token-for-the-default-endpoint-0123456789"
ADMIN_TOKEN = "token-for-the-admin-listener-9876543210"

CREDENTIALS = f"""
[[keys]]
access_key_id = "{ALLOWED[0]}"
secret_access_key = "{ALLOWED[1]}"
endpoints = ["default"]

[[keys]]
access_key_id = "{OTHER[0]}"
secret_access_key = "{OTHER[1]}"
endpoints = ["other-*"]

[[keys]]
access_key_id = "{ADMIN[0]}"
secret_access_key = "{ADMIN[1]}"
admin = true

[[tokens]]
token = "{TOKEN}"
endpoints = ["default"]

[[tokens]]
token = "{ADMIN_TOKEN}"
endpoints = []
admin = true
"""


def _server(tmp_path: Path, auth: str) -> Iterator[ThreadServer]:
    credentials = tmp_path / "credentials.toml"
    credentials.write_text(CREDENTIALS)
    source = sklearn_source(tmp_path / "source", ["m/model.tar.gz"], n_features=4)
    settings = Settings(
        model_source=str(source),
        cache_dir=tmp_path / "cache",
        auth=auth,  # type: ignore[arg-type]
        credentials_file=credentials,
    )
    with thread_server(settings) as server:
        yield server


@pytest.fixture
def sigv4_server(tmp_path: Path) -> Iterator[ThreadServer]:
    yield from _server(tmp_path, "sigv4")


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[ThreadServer]:
    yield from _server(tmp_path, "token")


def client(url: str, key: tuple[str, str] | None, region: str = "us-east-1") -> Any:
    config = Config(retries={"total_max_attempts": 1, "mode": "standard"})
    if key is None:
        config = config.merge(Config(signature_version=UNSIGNED))
        key = ("unused", "unused")
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=url,
        region_name=region,
        aws_access_key_id=key[0],
        aws_secret_access_key=key[1],
        config=config,
    )


def invoke(runtime: Any, endpoint: str = "default") -> Any:
    return runtime.invoke_endpoint(
        EndpointName=endpoint, TargetModel="m/model.tar.gz", ContentType="text/csv", Body=ROW
    )


def refused(call: Any) -> tuple[int, str, str]:
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response
    return (
        error["ResponseMetadata"]["HTTPStatusCode"],
        error["Error"]["Code"],
        error["Error"]["Message"],
    )


def signed(
    url: str, key: tuple[str, str], body: bytes, *, at: dt.datetime, endpoint: str = "default"
) -> tuple[str, dict[str, str]]:
    """A request signed by botocore's SigV4 signer as of ``at``: its URL and headers."""
    target = f"{url}/endpoints/{endpoint}/invocations"
    headers = {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": "m/model.tar.gz"}
    request = AWSRequest(method="POST", url=target, data=body, headers=headers)
    stamp = at.strftime("%Y%m%dT%H%M%SZ")
    request.context["timestamp"] = stamp
    request.headers["X-Amz-Date"] = stamp
    signer = SigV4Auth(Credentials(*key), "sagemaker", "us-east-1")
    canonical = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    scope = f"{key[0]}/{stamp[:8]}/us-east-1/sagemaker/aws4_request"
    names = ";".join(signer.headers_to_sign(request))
    request.headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders={names}, Signature={signature}"
    )
    return target, dict(request.headers.items())


def test_boto3_with_the_right_key_is_served(sigv4_server: ThreadServer) -> None:
    answer = invoke(client(sigv4_server.url, ALLOWED))
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert answer["Body"].read()
    assert httpx.get(f"{sigv4_server.url}/ping").status_code == 200  # /ping stays open


def test_boto3_refusals_are_the_services_errors(
    sigv4_server: ThreadServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = sigv4_server.url
    caplog.set_level(logging.WARNING, logger="modelfleet.auth")
    status, code, message = refused(lambda: invoke(client(url, None)))
    assert (status, code, message) == (
        403,
        "MissingAuthenticationTokenException",
        "Missing Authentication Token",
    )
    status, code, message = refused(lambda: invoke(client(url, (ALLOWED[0], "wrong"))))
    assert (status, code) == (403, "InvalidSignatureException")
    assert message.startswith("The request signature we calculated does not match")
    status, code, message = refused(lambda: invoke(client(url, ("AKIDUNKNOWN", "x"))))
    assert (status, code) == (403, "UnrecognizedClientException")
    assert message == "The security token included in the request is invalid."
    status, code, message = refused(lambda: invoke(client(url, ALLOWED, region="eu-west-1")))
    assert (status, code) == (403, "InvalidSignatureException")
    assert "scoped to a valid region" in message
    status, code, message = refused(lambda: invoke(client(url, OTHER)))
    assert (status, code) == (403, "AccessDeniedException")
    assert f"User: {OTHER[0]} is not authorized to perform: sagemaker:InvokeEndpoint" in message
    # logged without any secret
    logged = caplog.text
    assert "InvalidSignatureException" in logged
    assert "AccessDeniedException" in logged
    for secret in (ALLOWED[1], OTHER[1], ADMIN[1]):
        assert secret not in logged


def test_a_request_replayed_after_six_minutes_is_refused(sigv4_server: ThreadServer) -> None:
    now = dt.datetime.now(dt.UTC)
    target, headers = signed(sigv4_server.url, ALLOWED, ROW.encode(), at=now)
    assert httpx.post(target, content=ROW, headers=headers).status_code == 200
    for at, words in (
        (now - dt.timedelta(minutes=6), "Signature expired"),
        (now + dt.timedelta(minutes=6), "Signature not yet current"),
    ):
        target, headers = signed(sigv4_server.url, ALLOWED, ROW.encode(), at=at)
        answer = httpx.post(target, content=ROW, headers=headers)
        assert answer.status_code == 403
        assert answer.headers["x-amzn-errortype"] == "InvalidSignatureException"
        assert answer.json()["message"].startswith(words)


def test_a_tampered_body_or_path_is_refused(sigv4_server: ThreadServer) -> None:
    now = dt.datetime.now(dt.UTC)
    target, headers = signed(sigv4_server.url, ALLOWED, ROW.encode(), at=now)
    answer = httpx.post(target, content=ROW.replace("0.1", "9.9"), headers=headers)
    assert answer.status_code == 403
    assert answer.headers["x-amzn-errortype"] == "InvalidSignatureException"
    other = target.replace("/endpoints/default/", "/endpoints/other-1/")
    answer = httpx.post(other, content=ROW, headers=headers)
    assert answer.headers["x-amzn-errortype"] == "InvalidSignatureException"


def test_admin_paths_need_an_admin_key(sigv4_server: ThreadServer) -> None:
    url = f"{sigv4_server.admin_url}/metrics"
    assert httpx.get(url).headers["x-amzn-errortype"] == "MissingAuthenticationTokenException"
    for key, expected in ((ALLOWED, 403), (ADMIN, 200)):
        request = AWSRequest(method="GET", url=url, data=b"")
        request.context["timestamp"] = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        request.headers["X-Amz-Date"] = request.context["timestamp"]
        signer = SigV4Auth(Credentials(*key), "sagemaker", "us-east-1")
        canonical = signer.canonical_request(request)
        signature = signer.signature(signer.string_to_sign(request, canonical), request)
        stamp = request.context["timestamp"]
        request.headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={key[0]}/{stamp[:8]}/us-east-1/sagemaker/aws4_request, "
            f"SignedHeaders={';'.join(signer.headers_to_sign(request))}, Signature={signature}"
        )
        answer = httpx.get(url, headers=dict(request.headers.items()))
        assert answer.status_code == expected
        if expected == 403:
            assert answer.headers["x-amzn-errortype"] == "AccessDeniedException"


def test_bearer_tokens(token_server: ThreadServer) -> None:
    target = f"{token_server.url}/endpoints/default/invocations"
    headers = {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": "m/model.tar.gz"}
    ok = httpx.post(target, content=ROW, headers={**headers, "Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    for authorization, code in (
        (None, "MissingAuthenticationTokenException"),
        (f"Bearer {TOKEN}x", "UnrecognizedClientException"),
        (f"Basic {TOKEN}", "IncompleteSignatureException"),
    ):
        extra = {"Authorization": authorization} if authorization else {}
        answer = httpx.post(target, content=ROW, headers={**headers, **extra})
        assert answer.status_code == 403
        assert answer.headers["x-amzn-errortype"] == code


def test_the_admin_listener_needs_an_admin_token(token_server: ThreadServer) -> None:
    def get(base: str, path: str, token: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(f"{base}{path}", headers=headers)

    admin = token_server.admin_url
    for path in ("/metrics", "/admin/instances", "/models"):
        missing = get(admin, path, None)
        assert missing.headers["x-amzn-errortype"] == "MissingAuthenticationTokenException"
        denied = get(admin, path, TOKEN)  # allowed to invoke, not to administer
        assert denied.status_code == 403
        assert denied.headers["x-amzn-errortype"] == "AccessDeniedException"
        assert get(admin, path, ADMIN_TOKEN).status_code == 200
        # the public listener has no admin paths, whoever asks
        public = get(token_server.url, path, ADMIN_TOKEN)
        assert public.status_code == 404
        assert public.headers["x-amzn-errortype"] == "UnknownOperationException"
        # there, as anywhere, a request is authenticated before it is told anything
        unsigned = get(token_server.url, path, None)
        assert unsigned.status_code == 403
        assert unsigned.headers["x-amzn-errortype"] == "MissingAuthenticationTokenException"
    assert get(admin, "/ping", None).status_code == 200
    # modelfleet status speaks to the admin listener with the admin token
    shown = CliRunner().invoke(main, ["status", "--url", admin, "--token", ADMIN_TOKEN])
    assert shown.exit_code == 0, shown.output
    assert "default" in shown.output
    assert "up" in shown.output
    refused = CliRunner().invoke(main, ["status", "--url", admin, "--token", TOKEN])
    assert refused.exit_code == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "0.0.0.0"], "refusing to serve on 0.0.0.0 without authentication"),
        (["--admin-host", "::"], "refusing to serve on :: without authentication (--admin-host)"),
        (["--auth", "sigv4"], "--auth sigv4 needs --credentials-file"),
    ],
)
def test_serve_refuses_to_start_open_or_without_credentials(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(
        main, ["serve", "--cache-dir", str(tmp_path / "cache"), "--port", "0", *args]
    )
    assert result.exit_code == 2
    assert message in result.output
