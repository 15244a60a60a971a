"""Caller authentication for the public listener: AWS Signature Version 4, or bearer tokens.

``--auth sigv4 --credentials-file FILE``: every request but ``GET /ping`` must be signed as boto3
and the SageMaker SDK sign (service ``sagemaker``, the configured region). The signature is
recomputed from the request as received, its body included, and compared in constant time. The
computation is written here, by hand, after botocore's ``SigV4Auth`` (the canonical path with
botocore's own dot-segment removal and quoting, the raw query's pairs sorted, the signed
headers' values trimmed, the body's SHA-256): botocore's signer took 75 µs a request, about a
third of the warm path's CPU, where this takes about 10 (signing keys are kept per key and
day). ``tests/test_auth_signer.py`` checks it against botocore's signer on many requests, and
the end-to-end tests sign with boto3.
``--auth token``: ``Authorization: Bearer <token>``, compared in constant time against each
configured token. Refusals are answered as SageMaker answers them (403 with
``x-amzn-ErrorType``), so boto3 raises the same ``ClientError`` codes:

=============================== =====================================================
``MissingAuthenticationToken``  no ``Authorization`` header (no credentials)
``IncompleteSignature``          a malformed ``Authorization`` or no ``X-Amz-Date``
``UnrecognizedClient``           an access key id (or a token) that is not configured
``InvalidSignature``             a wrong signature (wrong secret, tampered body or path),
                                 a wrong region or service, a date outside ±5 minutes
``AccessDenied``                 a key not allowed on that endpoint (or on admin paths)
=============================== =====================================================

(each with the ``Exception`` suffix the service adds). The credentials file (TOML) lists keys
and tokens with the endpoints each may invoke (globs) and whether it may use the other paths
(``/metrics``, ``/admin/*``, the container contract)::

    [[keys]]
    access_key_id = "AKIAEXAMPLE"
    secret_access_key = "..."
    endpoints = ["*"]
    admin = false

    [[tokens]]
    token = "..."
    endpoints = ["fraud-*"]

Refusals are logged with the request id, the reason and the key id, never a secret.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import functools
import hashlib
import hmac
import logging
import re
import tomllib
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError

logger = logging.getLogger(__name__)

SERVICE = "sagemaker"
CLOCK_SKEW = dt.timedelta(minutes=5)
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_ALGORITHM = "AWS4-HMAC-SHA256"
_INVOKE_PATH = re.compile(r"^/endpoints/([^/]+)/invocations$")
_OPEN_PATHS = frozenset({"/ping"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Grant(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoints: tuple[str, ...] = ("*",)
    """Endpoint names (fnmatch globs) this credential may invoke."""
    admin: bool = False
    """Whether it may use the paths other than the runtime API and ``/ping``."""

    def allows(self, endpoint: str | None) -> bool:
        if endpoint is None:
            return self.admin
        return any(fnmatch.fnmatchcase(endpoint, pattern) for pattern in self.endpoints)


class AccessKey(_Grant):
    access_key_id: str = Field(min_length=1)
    secret_access_key: str = Field(min_length=1)


class Token(_Grant):
    token: str = Field(min_length=16)


class CredentialsFile(BaseModel):
    """The ``--credentials-file`` schema."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: tuple[AccessKey, ...] = ()
    tokens: tuple[Token, ...] = ()

    @classmethod
    def read(cls, path: Path) -> CredentialsFile:
        """The file at ``path``; ValueError saying what is wrong with it."""
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ValueError(f"cannot read the credentials file {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"the credentials file {path} is not valid TOML: {exc}") from exc
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"the credentials file {path}: {problems}") from exc


class Refused(Exception):
    """A request the authentication refuses: its AWS error code and message."""

    def __init__(self, code: str, message: str, *, key_id: str = "", status: int = 403) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.key_id = key_id
        self.status = status


@dataclass(frozen=True)
class Caller:
    """What the request proved: the key or token's grant."""

    name: str
    grant: _Grant


def _auth_parts(text: str) -> dict[str, str]:
    """``Credential=..., SignedHeaders=..., Signature=...`` as a dict (a split: half the time
    of a regular expression)."""
    parts: dict[str, str] = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        if sep and value and " " not in value:
            parts[name] = value
    return parts


def _parse_amz_date(text: str) -> dt.datetime:
    """``YYYYMMDDTHHMMSSZ`` (strptime costs ~10x this)."""
    if len(text) != 16 or text[8] != "T" or text[15] != "Z" or not text[:8].isdigit():
        raise ValueError(text)
    return dt.datetime(
        int(text[0:4]),
        int(text[4:6]),
        int(text[6:8]),
        int(text[9:11]),
        int(text[11:13]),
        int(text[13:15]),
        tzinfo=dt.UTC,
    )


@functools.lru_cache(maxsize=1024)
def canonical_path(raw_path: str) -> str:
    """The path as SigV4 canonicalises it: botocore's dot-segment removal, then its quoting of
    the path as sent (so an escaped character is escaped again, as the clients sign)."""
    from botocore.utils import normalize_url_path

    return quote(normalize_url_path(raw_path), safe="/~")


def canonical_query(query: str) -> str:
    """The raw query's ``key=value`` pairs sorted, as botocore signs a URL's query."""
    if not query:
        return ""
    pairs = sorted(pair.partition("=")[::2] for pair in query.split("&"))
    return "&".join(f"{key}={value}" for key, value in pairs)


@functools.lru_cache(maxsize=256)
def _signing_key(secret: str, date: str, region: str) -> bytes:
    """The SigV4 key for ``secret`` on ``date`` (four HMACs, the same all day)."""
    key = hmac.new(f"AWS4{secret}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, SERVICE, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


class SigV4Verifier:
    """Checks AWS Signature Version 4 with botocore's signer."""

    def __init__(self, keys: tuple[AccessKey, ...], region: str) -> None:
        import botocore.utils  # noqa: F401 - canonical_path's; missing, it fails the start

        self.region = region
        self._keys = {key.access_key_id: key for key in keys}
        self._callers = {key.access_key_id: Caller(key.access_key_id, key) for key in keys}
        self._scope_suffix = f"/{region}/{SERVICE}/aws4_request"
        self._window: tuple[int, str, str] = (-1, "", "")  # a second, and its dates' bounds

    def verify(
        self,
        *,
        method: str,
        raw_path: str,
        query: str,
        headers: dict[str, str],
        body: bytes,
        now: dt.datetime,
    ) -> Caller:
        """``headers``: lower-case names, repeated ones joined with ``,``."""
        authorization = headers.get("authorization")
        if not authorization:
            raise Refused("MissingAuthenticationTokenException", "Missing Authentication Token")
        algorithm, _, rest = authorization.partition(" ")
        parts = _auth_parts(rest)
        missing = [p for p in ("Credential", "SignedHeaders", "Signature") if p not in parts]
        if algorithm != _ALGORITHM or missing:
            names = missing or ["a supported algorithm (AWS4-HMAC-SHA256)"]
            raise Refused(
                "IncompleteSignatureException",
                " ".join(f"Authorization header requires '{p}' parameter." for p in names),
            )
        key_id, _, scope = parts["Credential"].partition("/")
        amz_date = headers.get("x-amz-date")
        if not amz_date:
            raise Refused(
                "IncompleteSignatureException",
                "Authorization header requires existence of either a 'X-Amz-Date' or a "
                "'Date' header.",
                key_id=key_id,
            )
        key = self._keys.get(key_id)
        if key is None:
            raise Refused(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
                key_id=key_id,
            )
        if scope[:8] != amz_date[:8] or scope[8:] != self._scope_suffix:
            self._check_scope(scope, amz_date, key_id)  # raises, saying what is wrong
        second = int(now.timestamp())
        if self._window[0] != second:  # whole seconds strictly inside this second's window
            earliest = (now - CLOCK_SKEW).replace(microsecond=0) + dt.timedelta(seconds=1)
            latest = now.replace(microsecond=0) + CLOCK_SKEW
            self._window = (second, earliest.strftime(_AMZ_DATE), latest.strftime(_AMZ_DATE))
        # the basic format orders as text does; anything else (the window's edges, another
        # format) is parsed and checked precisely
        if not (
            len(amz_date) == 16
            and amz_date[8] == "T"
            and amz_date[15] == "Z"
            and self._window[1] <= amz_date <= self._window[2]
        ):
            self._check_date(amz_date, now, key_id)
        signed = parts["SignedHeaders"].split(";")
        if "host" not in signed:
            raise Refused(
                "IncompleteSignatureException",
                "'Host' must be a signed header.",
                key_id=key_id,
            )
        body_hash = hashlib.sha256(body).hexdigest()
        declared = headers.get("x-amz-content-sha256")
        if declared is not None and declared != body_hash:  # never trust a declared hash
            raise Refused(
                "InvalidSignatureException",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
                key_id=key_id,
            )
        canonical = "\n".join(
            (
                method.upper(),
                canonical_path(raw_path),
                canonical_query(query),
                "".join(f"{n}:{' '.join(headers.get(n, '').split())}\n" for n in sorted(signed)),
                ";".join(sorted(signed)),
                body_hash,
            )
        )
        to_sign = "\n".join(
            (
                _ALGORITHM,
                amz_date,
                f"{amz_date[:8]}/{self.region}/{SERVICE}/aws4_request",
                hashlib.sha256(canonical.encode()).hexdigest(),
            )
        )
        signing_key = _signing_key(key.secret_access_key, amz_date[:8], self.region)
        expected = hmac.digest(signing_key, to_sign.encode(), "sha256").hex()
        if not hmac.compare_digest(expected.encode(), parts["Signature"].encode()):
            raise Refused(
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you "
                "provided. Check your AWS Secret Access Key and signing method. Consult the "
                "service documentation for details.",
                key_id=key_id,
            )
        return self._callers[key_id]

    def _check_scope(self, scope: str, amz_date: str, key_id: str) -> None:
        date, region, service, terminal = [*scope.split("/"), "", "", "", ""][:4]
        if terminal != "aws4_request" or date != amz_date[:8]:
            raise Refused(
                "InvalidSignatureException",
                "Credential should be scoped to a valid date and end with 'aws4_request'.",
                key_id=key_id,
            )
        if region != self.region:
            raise Refused(
                "InvalidSignatureException",
                f"Credential should be scoped to a valid region, not '{region}'.",
                key_id=key_id,
            )
        if service != SERVICE:
            raise Refused(
                "InvalidSignatureException",
                f"Credential should be scoped to correct service: '{SERVICE}'.",
                key_id=key_id,
            )

    def _check_date(self, amz_date: str, now: dt.datetime, key_id: str) -> None:
        try:
            signed_at = _parse_amz_date(amz_date)
        except ValueError:
            raise Refused(
                "IncompleteSignatureException",
                f"Date must be in ISO-8601 'basic format'. Got '{amz_date}'.",
                key_id=key_id,
            ) from None
        if signed_at < now - CLOCK_SKEW:
            stamp = now.strftime(_AMZ_DATE)
            earliest = (now - CLOCK_SKEW).strftime(_AMZ_DATE)
            raise Refused(
                "InvalidSignatureException",
                f"Signature expired: {amz_date} is now earlier than {earliest} ({stamp} - 5 min.)",
                key_id=key_id,
            )
        if signed_at > now + CLOCK_SKEW:
            stamp = now.strftime(_AMZ_DATE)
            latest = (now + CLOCK_SKEW).strftime(_AMZ_DATE)
            raise Refused(
                "InvalidSignatureException",
                f"Signature not yet current: {amz_date} is still later than {latest} "
                f"({stamp} + 5 min.)",
                key_id=key_id,
            )


class TokenVerifier:
    """Checks ``Authorization: Bearer <token>`` against the configured tokens."""

    def __init__(self, tokens: tuple[Token, ...]) -> None:
        # Digests of equal length: compare_digest's time then says nothing about the token.
        self._tokens = [(hashlib.sha256(t.token.encode()).digest(), t) for t in tokens]

    def verify(self, *, headers: dict[str, str], **_: Any) -> Caller:
        authorization = headers.get("authorization")
        if not authorization:
            raise Refused("MissingAuthenticationTokenException", "Missing Authentication Token")
        scheme, _space, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Refused(
                "IncompleteSignatureException",
                "The Authorization header must be 'Bearer <token>'.",
            )
        digest = hashlib.sha256(value.strip().encode()).digest()
        found = None
        for index, (known, token) in enumerate(self._tokens):
            if hmac.compare_digest(known, digest):  # no early exit: every token is compared
                found = (index, token)
        if found is None:
            raise Refused(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        return Caller(f"token #{found[0] + 1}", found[1])


Verifier = SigV4Verifier | TokenVerifier


def make_verifier(
    mode: Literal["none", "sigv4", "token"], credentials_file: Path | None, region: str
) -> Verifier | None:
    """The verifier ``mode`` asks for; ValueError if its credentials are missing or invalid."""
    if mode == "none":
        return None
    if credentials_file is None:
        raise ValueError(f"--auth {mode} needs --credentials-file")
    credentials = CredentialsFile.read(credentials_file)
    if mode == "sigv4":
        if not credentials.keys:
            raise ValueError(f"the credentials file {credentials_file} has no [[keys]]")
        try:
            return SigV4Verifier(credentials.keys, region)
        except ImportError as exc:
            raise ValueError("--auth sigv4 needs botocore: pip install 'modelfleet[aws]'") from exc
    if not credentials.tokens:
        raise ValueError(f"the credentials file {credentials_file} has no [[tokens]]")
    return TokenVerifier(credentials.tokens)


def check(verifier: Verifier, scope: Scope, body: bytes, *, endpoint: str | None) -> Caller:
    """The caller of the HTTP request ``scope`` with ``body``, allowed on ``endpoint`` (None: an
    admin path); :class:`Refused` (logged, without secrets) otherwise."""
    raw = scope["headers"]  # ASGI header names are lower case
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in raw}
    if len(headers) != len(raw):  # a repeated header: its values joined, as signers join them
        headers = {}
        for name, value in raw:
            key, text = name.decode("latin-1"), value.decode("latin-1")
            headers[key] = f"{headers[key]},{text}" if key in headers else text
    raw_path = scope.get("raw_path") or scope["path"].encode()
    try:
        caller = verifier.verify(
            method=scope["method"],
            raw_path=raw_path.decode("latin-1"),
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
            body=body,
            now=dt.datetime.now(dt.UTC),
        )
        if not caller.grant.allows(endpoint):
            action = "sagemaker:InvokeEndpoint" if endpoint else "this server's admin API"
            resource = f"endpoint/{endpoint}" if endpoint else scope["path"]
            raise Refused(
                "AccessDeniedException",
                f"User: {caller.name} is not authorized to perform: {action} on "
                f"resource: {resource}",
                key_id=caller.name,
            )
    except Refused as refused:
        logger.warning(
            "Refused %s %s: %s (%s)%s",
            scope["method"],
            scope["path"],
            refused.code,
            refused.message,
            f", key {refused.key_id}" if refused.key_id else "",
        )
        raise
    return caller


class AuthMiddleware:
    """ASGI middleware: verify every HTTP request but ``GET /ping`` and the runtime API's
    invocations before the app sees it; the invocation handler calls :func:`check` itself,
    once it has read the body (the hot path reads it once, not through a replay).

    The body is read here (the signature covers it, up to ``max_body_bytes``) and handed to the
    app unchanged.
    """

    def __init__(
        self,
        app: ASGIApp,
        verifier: Verifier,
        *,
        max_body_bytes: int,
        refuse: Callable[[Refused], Any],
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.max_body_bytes = max_body_bytes
        self.refuse = refuse  # Refused -> a Starlette Response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] in _OPEN_PATHS
            or _INVOKE_PATH.match(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:  # refused before any verification work
                too_large = Refused(
                    "ValidationError",
                    f"The request body is larger than {self.max_body_bytes} bytes.",
                    status=413,
                )
                await self.refuse(too_large)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            check(self.verifier, scope, body, endpoint=None)
        except Refused as refused:
            await self.refuse(refused)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
