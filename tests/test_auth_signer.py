"""The SigV4 verifier's hand-written canonicalisation against botocore's own signer.

Each request is signed by botocore's ``SigV4Auth`` (what boto3 does), taken apart as the server
receives it (method, path and query as sent, header values, body), and verified; then changed
in one respect and refused.
"""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from modelfleet.auth import AccessKey, Refused, SigV4Verifier

KEY = AccessKey(
    access_key_id="AKIDSIGNERTEST01", secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCY"
)
VERIFIER = SigV4Verifier((KEY,), "eu-west-1")

REQUESTS = [
    ("POST", "http://127.0.0.1:8080/endpoints/default/invocations", {}, b"1,2,3"),
    ("POST", "https://models.example:8443/endpoints/fraud-eu.v2/invocations", {}, b""),
    ("POST", "http://localhost/endpoints/a%20b/invocations", {}, b"\x00\xff binary"),
    ("POST", "http://127.0.0.1:9/endpoints/%C3%A9t%C3%A9/invocations", {}, b"{}"),
    ("GET", "http://127.0.0.1:9/models?limit=5&next_page_token=YWJj", {}, b""),
    ("GET", "http://127.0.0.1:9/metrics?b=2&a=1&a=0", {}, b""),
    (
        "POST",
        "http://127.0.0.1:9/endpoints/default/invocations",
        {
            "Content-Type": "text/csv",
            "X-Amzn-SageMaker-Target-Model": "team/model 1.tar.gz",
            "X-Amzn-SageMaker-Custom-Attributes": "  a=1,   b=2  ",
            "Accept": "application/json",
        },
        b"0.5,1.5\n2.5,3.5\n",
    ),
    (  # latin-1 on the wire, signed as UTF-8 text; a tab folded like spaces
        "POST",
        "http://127.0.0.1:9/endpoints/default/invocations",
        {"X-Amzn-SageMaker-Custom-Attributes": " caf\u00e9\tcr\u00e8me  x "},
        b"1",
    ),
]


def received(request: AWSRequest) -> dict[str, object]:
    """What the server sees of ``request``: the pieces on the wire."""
    parts = urlsplit(request.url)
    headers = {k.lower(): v for k, v in request.headers.items()}
    default_port = {"http": 80, "https": 443}[parts.scheme]
    host = parts.hostname or ""
    headers["host"] = host if parts.port in (None, default_port) else f"{host}:{parts.port}"
    return {
        "method": request.method,
        "raw_path": parts.path.encode(),
        "query": parts.query.encode(),
        "headers": {name.encode(): value.encode("latin-1") for name, value in headers.items()},
        "body": request.body or b"",
    }


def sign(method: str, url: str, headers: dict[str, str], body: bytes) -> dict[str, object]:
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    SigV4Auth(
        Credentials(KEY.access_key_id, KEY.secret_access_key), "sagemaker", "eu-west-1"
    ).add_auth(request)
    return received(request.prepare())


def now_of(wire: dict[str, object]) -> float:
    stamp = wire["headers"][b"x-amz-date"].decode()  # type: ignore[index]
    return dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize(("method", "url", "headers", "body"), REQUESTS)
def test_botocore_signed_requests_verify(
    method: str, url: str, headers: dict[str, str], body: bytes
) -> None:
    wire = sign(method, url, headers, body)
    verifier = SigV4Verifier((KEY,), "eu-west-1")
    for _ in range(2):  # the whole way, then as a request of a shape already verified
        caller = verifier.verify(now=now_of(wire), **wire)  # type: ignore[arg-type]
        assert caller.name == KEY.access_key_id


@pytest.mark.parametrize(("method", "url", "headers", "body"), REQUESTS)
@pytest.mark.parametrize("change", ["body", "path", "query", "method", "header", "declared"])
def test_any_change_after_signing_is_refused(
    method: str, url: str, headers: dict[str, str], body: bytes, change: str
) -> None:
    wire = sign(method, url, headers, body)
    verifier = SigV4Verifier((KEY,), "eu-west-1")
    verifier.verify(now=now_of(wire), **wire)  # type: ignore[arg-type]
    sent = dict(wire)
    sent["headers"] = dict(wire["headers"])  # type: ignore[call-overload]
    if change == "body":
        sent["body"] = body + b"!"
    elif change == "path":
        sent["raw_path"] = wire["raw_path"] + b"x"  # type: ignore[operator]
    elif change == "query":
        sent["query"] = wire["query"] + b"&z=1"  # type: ignore[operator]
    elif change == "method":
        sent["method"] = "PUT"
    elif change == "header":
        sent["headers"][b"host"] = b"other.example"  # type: ignore[index]
    else:  # a declared body hash that is not the body's
        sent["headers"][b"x-amz-content-sha256"] = b"0" * 64  # type: ignore[index]
    for checker in (VERIFIER, verifier):  # a new shape, and one the verifier has seen
        with pytest.raises(Refused) as caught:
            checker.verify(now=now_of(wire), **sent)  # type: ignore[arg-type]
        assert caught.value.code == "InvalidSignatureException"


@pytest.mark.parametrize(
    ("offset_s", "code"),
    [
        (-299.0, None),
        (-300.0, None),
        (-300.5, "Signature expired"),
        (-301.0, "Signature expired"),
        (299.0, None),
        (300.0, None),
        (300.5, "Signature not yet current"),
        (301.0, "Signature not yet current"),
    ],
)
def test_the_clock_window_is_five_minutes_either_side(offset_s: float, code: str | None) -> None:
    """``offset_s``: how far the server's clock is behind the signature's date (the request
    was signed that long before or after ``now``); every sub-second of ``now`` is tried, twice
    in one second, so the verifier's per-second bounds are checked at their edges."""
    method, url, headers, body = REQUESTS[0]
    wire = sign(method, url, headers, body)
    signed_at = now_of(wire)
    for fraction in (0.0, 0.25, 0.5, 0.999999, 0.0, 0.999999):
        now = signed_at - offset_s + fraction
        precise = abs(now - signed_at) <= 300
        if code is None and precise:
            assert VERIFIER.verify(now=now, **wire).name == KEY.access_key_id  # type: ignore[arg-type]
            continue
        if precise:  # inside by the fraction: accepted, as the precise comparison says
            VERIFIER.verify(now=now, **wire)  # type: ignore[arg-type]
            continue
        with pytest.raises(Refused, match=code or "Signature"):
            VERIFIER.verify(now=now, **wire)  # type: ignore[arg-type]


def test_a_verified_shape_is_verified_again_without_parsing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second request of a key, path and signed headers already verified takes the short
    way (its hashes only); a tampered one still goes the whole way and is refused."""
    verifier = SigV4Verifier((KEY,), "eu-west-1")
    first = sign(*REQUESTS[0])
    verifier.verify(now=now_of(first), **first)  # type: ignore[arg-type]
    whole_way = verifier._verify_fully
    calls: list[int] = []

    def counted(*args: object) -> object:
        calls.append(1)
        return whole_way(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(verifier, "_verify_fully", counted)
    method, url, headers, _ = REQUESTS[0]
    for body in (b"0.5,1.5\n", b"9,9\n"):  # new bodies, new signatures, the same shape
        wire = sign(method, url, headers, body)
        assert verifier.verify(now=now_of(wire), **wire).name == KEY.access_key_id  # type: ignore[arg-type]
    assert calls == []
    tampered = dict(wire, body=b"9,8\n")
    with pytest.raises(Refused, match="signature we calculated does not match"):
        verifier.verify(now=now_of(wire), **tampered)  # type: ignore[arg-type]
    assert calls == [1]
