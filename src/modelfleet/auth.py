"""Caller authentication for the public listener: AWS Signature Version 4, or bearer tokens.

``--auth sigv4 --credentials-file FILE``: every request but ``GET /ping`` must be signed as boto3
and the SageMaker SDK sign (service ``sagemaker``, or ``application-autoscaling`` for those calls
on the admin listener; the configured region). The signature is
recomputed from the request as received, its body included, and compared in constant time. The
computation is written here, by hand, after botocore's ``SigV4Auth`` (the canonical path with
botocore's own dot-segment removal and quoting, the raw query's pairs sorted, the signed
headers' values trimmed, the body's SHA-256): botocore's signer took 75 µs a request, about a
third of the warm path's CPU, where this takes about 4 (HMAC states are kept per key and day,
and what a request's shape determines once it has verified: :meth:`SigV4Verifier.verify`).
``tests/test_auth_signer.py`` checks it against botocore's signer on many requests, and
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
import time
import tomllib
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError

logger = logging.getLogger(__name__)

SERVICE = "sagemaker"
#: the services a signature may be scoped to: SageMaker's (runtime and control plane) and
#: Application Auto Scaling's, whose calls the admin listener also serves
SERVICES = (SERVICE, "application-autoscaling")
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
    _allowed: dict[str | None, bool] = field(default_factory=dict, compare=False, repr=False)

    def allows(self, endpoint: str | None) -> bool:
        """Whether the grant covers ``endpoint`` (None: the admin paths); remembered per name."""
        allowed = self._allowed.get(endpoint)
        if allowed is None:
            if len(self._allowed) >= _KNOWN_MAX:
                self._allowed.clear()
            allowed = self._allowed[endpoint] = self.grant.allows(endpoint)
        return allowed


_AUTHORIZATION = re.compile(
    rb"AWS4-HMAC-SHA256 Credential=([^,\s]+), ?SignedHeaders=([^,\s]+), ?Signature=([^,\s]+)"
)
# printable ASCII: a header value of only these is trimmed and signed as its bytes
_PRINTABLE = bytes(range(0x20, 0x7F))
_PRINTABLE_LF = _PRINTABLE + b"\n"
_SHA256 = hashlib.sha256()  # copied: cheaper than a new one, which looks the digest up
_KNOWN_MAX = 4096  # verify's remembered request shapes
_METHODS = {m: m.encode() for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS")}


def _auth_parts(text: str) -> dict[str, str]:
    """``Credential=..., SignedHeaders=..., Signature=...`` as a dict, however it is spaced."""
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
def canonical_path(raw_path: bytes) -> bytes:
    """The path as SigV4 canonicalises it: botocore's dot-segment removal, then its quoting of
    the path as sent (so an escaped character is escaped again, as the clients sign)."""
    from botocore.utils import normalize_url_path

    return quote(normalize_url_path(raw_path.decode("latin-1")), safe="/~").encode()


def canonical_query(query: bytes) -> bytes:
    """The raw query's ``key=value`` pairs sorted, as botocore signs a URL's query."""
    if not query:
        return b""
    pairs = sorted(pair.partition(b"=")[::2] for pair in query.split(b"&"))
    return b"&".join(key + b"=" + value for key, value in pairs)


@functools.lru_cache(maxsize=256)
def _signed_headers(text: bytes) -> tuple[tuple[bytes, ...], bytes, bytes]:
    """``SignedHeaders``' names, sorted as signers sort them, their canonical line, and a
    template of the canonical headers (``name:%s\\n`` each) for values that need no trimming."""
    names = tuple(sorted(text.split(b";")))
    template = b"".join(name.replace(b"%", b"%%") + b":%s\n" for name in names)
    return names, b";".join(names), template


def _canonical_value(value: bytes) -> bytes:
    """A header value as SigV4 signs it: trimmed, runs of white space made one space; signers
    work on text (the value as latin-1) and hash its UTF-8."""
    if not value.translate(None, _PRINTABLE):  # printable ASCII: its only white space is " "
        return b" ".join(value.split()) if b" " in value else value
    return " ".join(value.decode("latin-1").split()).encode()


def _hmac_pads(
    secret: str, date: str, region: str, service: str = SERVICE
) -> tuple[hashlib._Hash, hashlib._Hash]:
    """SHA-256 states after the inner and outer pads of HMAC (RFC 2104) keyed with the SigV4
    key for ``secret`` on ``date`` (four HMACs, the same all day). Written out because the hmac
    module sets a key up again on every call, about 1.5 µs of the 8 a verification took; from
    these states an HMAC is two copies and two updates (:meth:`SigV4Verifier.verify`)."""
    key = hmac.new(f"AWS4{secret}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    block = key.ljust(64, b"\0")  # SHA-256's block; the key (32 bytes) is never longer
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
    return inner, outer


class SigV4Verifier:
    """Checks AWS Signature Version 4 as botocore's signer makes it."""

    def __init__(self, keys: tuple[AccessKey, ...], region: str) -> None:
        import botocore.utils  # noqa: F401 - canonical_path's; missing, it fails the start

        self.region = region
        self._keys = {key.access_key_id.encode(): key for key in keys}
        self._callers = {key.access_key_id.encode(): Caller(key.access_key_id, key) for key in keys}
        self._scope_suffix = f"/{region}/{SERVICE}/aws4_request".encode()
        self._window: tuple[int, bytes, bytes] = (-1, b"", b"")  # a second, its dates' bounds
        self._pads: dict[tuple[bytes, bytes], tuple[hashlib._Hash, hashlib._Hash]] = {}
        self._known: dict[tuple[bytes, str, bytes, bytes], tuple[Any, ...]] = {}

    def verify(
        self,
        *,
        method: str,
        raw_path: bytes,
        query: bytes,
        headers: Mapping[bytes, bytes],
        body: bytes,
        now: float,
    ) -> Caller:
        """The caller whose signature ``headers`` carry for this request; :class:`Refused`
        otherwise. ``headers``: lower-case names, repeated ones joined with ``,``; ``now``: the
        server's clock, seconds since the epoch.

        A client signs request after request with the same key, scope, signed headers and
        path: what follows from those alone (the key, its day's HMAC state, the canonical
        request's fixed text) is kept per ``Authorization`` prefix (all but the signature),
        method, path and query once a request with them has verified, so the next such request
        costs its hashes, not its parsing. The signature, the date's window and the body are
        checked on every request; anything unusual goes the whole way.
        """
        authorization = headers.get(b"authorization")
        if authorization:
            known = self._known.get((authorization[:-64], method, raw_path, query))
            if known is not None:
                day, names, template, lines, sign_template, inner, outer, caller = known
                amz_date = headers.get(b"x-amz-date", b"")
                values = tuple(map(headers.get, names))
                if amz_date[:8] == day and self._inside(amz_date, now) and None not in values:
                    hashed = _SHA256.copy()  # no digest lookup, as hashlib.sha256() makes
                    hashed.update(body)
                    body_hash = hashed.hexdigest().encode()
                    # The values as received, untrimmed. With no line break among them, each
                    # line of this text is one name and value in a fixed order, so if its
                    # HMAC matches, the values are exactly the trimmed ones the client
                    # signed, and the whole way would accept the request too; a value to
                    # trim or fold fails the match and goes the whole way.
                    canonical = template % (*values, body_hash)
                    if (
                        canonical.count(b"\n") == lines
                        and headers.get(b"x-amz-content-sha256", body_hash) == body_hash
                    ):
                        hashed = _SHA256.copy()
                        hashed.update(canonical)
                        to_sign = sign_template % (amz_date, hashed.hexdigest().encode())
                        inner, outer = inner.copy(), outer.copy()
                        inner.update(to_sign)
                        outer.update(inner.digest())
                        if hmac.compare_digest(outer.hexdigest().encode(), authorization[-64:]):
                            return caller  # type: ignore[no-any-return]
        return self._verify_fully(method, raw_path, query, headers, body, now)

    def _verify_fully(
        self,
        method: str,
        raw_path: bytes,
        query: bytes,
        headers: Mapping[bytes, bytes],
        body: bytes,
        now: float,
    ) -> Caller:
        authorization = headers.get(b"authorization")
        if not authorization:
            raise Refused("MissingAuthenticationTokenException", "Missing Authentication Token")
        found = _AUTHORIZATION.fullmatch(authorization)
        if found is not None:  # as botocore formats it
            credential, signed_headers, signature = found.groups()
        else:
            credential, signed_headers, signature = self._parse_authorization(authorization)
        key_id, _, scope = credential.partition(b"/")
        amz_date = headers.get(b"x-amz-date")
        if not amz_date:
            raise Refused(
                "IncompleteSignatureException",
                "Authorization header requires existence of either a 'X-Amz-Date' or a "
                "'Date' header.",
                key_id=key_id.decode("latin-1"),
            )
        key = self._keys.get(key_id)
        if key is None:
            raise Refused(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
                key_id=key_id.decode("latin-1"),
            )
        suffix = self._scope_suffix
        if scope[:8] != amz_date[:8] or scope[8:] != suffix:
            service = self._check_scope(scope.decode("latin-1"), amz_date.decode("latin-1"), key)
            suffix = f"/{self.region}/{service}/aws4_request".encode()
        if not self._inside(amz_date, now):
            self._check_date(amz_date.decode("latin-1"), now, key)
        names, signed_line, template = _signed_headers(signed_headers)
        if b"host" not in names:
            raise Refused(
                "IncompleteSignatureException",
                "'Host' must be a signed header.",
                key_id=key.access_key_id,
            )
        values = tuple(map(headers.get, names))
        if (  # all there, printable ASCII, one line each, no space to trim or fold: as they are
            None not in values
            and not (block := template % values).translate(None, _PRINTABLE_LF)
            and block.count(b"\n") == len(names)
            and b"  " not in block
            and b": " not in block
            and b" \n" not in block
        ):
            pass
        else:
            block = b"".join(
                [
                    name + b":" + _canonical_value(v or b"") + b"\n"
                    for name, v in zip(names, values, strict=True)
                ]
            )
        body_hash = hashlib.sha256(body).hexdigest().encode()
        declared = headers.get(b"x-amz-content-sha256")
        if declared is not None and declared != body_hash:  # never trust a declared hash
            raise Refused(
                "InvalidSignatureException",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
                key_id=key.access_key_id,
            )
        canonical = b"%s\n%s\n%s\n%s\n%s\n%s" % (
            _METHODS.get(method) or method.upper().encode(),
            canonical_path(raw_path),
            canonical_query(query),
            block,
            signed_line,
            body_hash,
        )
        day = amz_date[:8]
        to_sign = b"AWS4-HMAC-SHA256\n%s\n%s%s\n%s" % (
            amz_date,
            day,
            suffix,
            hashlib.sha256(canonical).hexdigest().encode(),
        )
        pads = self._pads.get((key_id, day + suffix))
        if pads is None:
            if len(self._pads) >= 4 * len(self._keys) + 64:  # old days
                self._pads.clear()
            service = suffix.split(b"/")[2].decode()
            pads = self._pads[key_id, day + suffix] = _hmac_pads(
                key.secret_access_key, day.decode(), self.region, service
            )
        inner, outer = pads[0].copy(), pads[1].copy()
        inner.update(to_sign)
        outer.update(inner.digest())
        if not hmac.compare_digest(outer.hexdigest().encode(), signature):
            raise Refused(
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you "
                "provided. Check your AWS Secret Access Key and signing method. Consult the "
                "service documentation for details.",
                key_id=key.access_key_id,
            )
        if found is not None and authorization[-64:] == signature:  # botocore's form
            shape = (authorization[:-64], method, raw_path, query)
            self._remember(shape, key_id, day, day + suffix, pads, names, signed_line)
        return self._callers[key_id]

    def _remember(
        self,
        shape: tuple[bytes, str, bytes, bytes],
        key_id: bytes,
        day: bytes,
        scope: bytes,
        pads: tuple[hashlib._Hash, hashlib._Hash],
        names: tuple[bytes, ...],
        signed_line: bytes,
    ) -> None:
        """Keep what a verified request's ``shape`` (its ``Authorization`` prefix, method, path
        and query) determines (:meth:`verify`); only a key's holder adds to it, and it is
        bounded."""
        if len(self._known) >= _KNOWN_MAX:
            self._known.clear()
        _, method, raw_path, query = shape
        fixed = (
            _METHODS.get(method) or method.upper().encode(),
            canonical_path(raw_path),
            canonical_query(query),
        )
        template = b"\n".join(
            (
                *(part.replace(b"%", b"%%") for part in fixed),
                b"".join(name.replace(b"%", b"%%") + b":%s\n" for name in names),
                signed_line.replace(b"%", b"%%"),
                b"%s",
            )
        )
        sign_template = b"AWS4-HMAC-SHA256\n%s\n" + scope.replace(b"%", b"%%") + b"\n%s"
        self._known[shape] = (
            day,
            names,
            template,
            template.count(b"\n"),
            sign_template,
            pads[0],
            pads[1],
            self._callers[key_id],
        )

    def _inside(self, amz_date: bytes, now: float) -> bool:
        """Whether ``amz_date`` is, in the basic format, a whole second strictly inside the
        ±5 minute window of ``now``: the format orders as text does, so two comparisons with
        this second's bounds decide. Anything else (the window's edges, another format) is
        for :meth:`_check_date`, which parses and checks precisely."""
        window = self._window
        if window[0] != int(now):
            window = self._window = self._window_at(int(now))
        return (
            window[1] <= amz_date <= window[2]
            and len(amz_date) == 16
            and amz_date[8] == 0x54  # T
            and amz_date[15] == 0x5A  # Z
        )

    @staticmethod
    def _window_at(second: int) -> tuple[int, bytes, bytes]:
        at = dt.datetime.fromtimestamp(second, dt.UTC)
        earliest = (at - CLOCK_SKEW + dt.timedelta(seconds=1)).strftime(_AMZ_DATE)
        latest = (at + CLOCK_SKEW).strftime(_AMZ_DATE)
        return second, earliest.encode(), latest.encode()

    @staticmethod
    def _parse_authorization(authorization: bytes) -> tuple[bytes, bytes, bytes]:
        """Credential, SignedHeaders and Signature however spaced; Refused naming what is
        missing."""
        algorithm, _, rest = authorization.decode("latin-1").partition(" ")
        parts = _auth_parts(rest)
        missing = [p for p in ("Credential", "SignedHeaders", "Signature") if p not in parts]
        if algorithm != _ALGORITHM or missing:
            names = missing or ["a supported algorithm (AWS4-HMAC-SHA256)"]
            raise Refused(
                "IncompleteSignatureException",
                " ".join(f"Authorization header requires '{p}' parameter." for p in names),
            )
        return tuple(  # type: ignore[return-value]
            parts[p].encode("latin-1") for p in ("Credential", "SignedHeaders", "Signature")
        )

    def _check_scope(self, scope: str, amz_date: str, key: AccessKey) -> str:
        """The service of a scope other than SageMaker's; Refused saying what is wrong."""
        date, region, service, terminal = [*scope.split("/"), "", "", "", ""][:4]
        if terminal != "aws4_request" or date != amz_date[:8]:
            raise Refused(
                "InvalidSignatureException",
                "Credential should be scoped to a valid date and end with 'aws4_request'.",
                key_id=key.access_key_id,
            )
        if region != self.region:
            raise Refused(
                "InvalidSignatureException",
                f"Credential should be scoped to a valid region, not '{region}'.",
                key_id=key.access_key_id,
            )
        if service not in SERVICES:
            raise Refused(
                "InvalidSignatureException",
                f"Credential should be scoped to correct service: '{SERVICE}'.",
                key_id=key.access_key_id,
            )
        return service

    def _check_date(self, amz_date: str, now: float, key: AccessKey) -> None:
        try:
            signed_at = _parse_amz_date(amz_date)
        except ValueError:
            raise Refused(
                "IncompleteSignatureException",
                f"Date must be in ISO-8601 'basic format'. Got '{amz_date}'.",
                key_id=key.access_key_id,
            ) from None
        at = dt.datetime.fromtimestamp(now, dt.UTC)
        if signed_at < at - CLOCK_SKEW:
            stamp = at.strftime(_AMZ_DATE)
            earliest = (at - CLOCK_SKEW).strftime(_AMZ_DATE)
            raise Refused(
                "InvalidSignatureException",
                f"Signature expired: {amz_date} is now earlier than {earliest} ({stamp} - 5 min.)",
                key_id=key.access_key_id,
            )
        if signed_at > at + CLOCK_SKEW:
            stamp = at.strftime(_AMZ_DATE)
            latest = (at + CLOCK_SKEW).strftime(_AMZ_DATE)
            raise Refused(
                "InvalidSignatureException",
                f"Signature not yet current: {amz_date} is still later than {latest} "
                f"({stamp} + 5 min.)",
                key_id=key.access_key_id,
            )


class TokenVerifier:
    """Checks ``Authorization: Bearer <token>`` against the configured tokens."""

    def __init__(self, tokens: tuple[Token, ...]) -> None:
        # Digests of equal length: compare_digest's time then says nothing about the token.
        self._tokens = [(hashlib.sha256(t.token.encode()).digest(), t) for t in tokens]

    def verify(self, *, headers: Mapping[bytes, bytes], **_: Any) -> Caller:
        authorization = headers.get(b"authorization")
        if not authorization:
            raise Refused("MissingAuthenticationTokenException", "Missing Authentication Token")
        scheme, _space, value = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not value.strip():
            raise Refused(
                "IncompleteSignatureException",
                "The Authorization header must be 'Bearer <token>'.",
            )
        digest = hashlib.sha256(value.strip()).digest()
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
    headers = dict(raw)
    if len(headers) != len(raw):  # a repeated header: its values joined, as signers join them
        headers = {}
        for name, value in raw:
            headers[name] = headers[name] + b"," + value if name in headers else value
    try:
        caller = verifier.verify(
            method=scope["method"],
            raw_path=scope.get("raw_path") or scope["path"].encode(),
            query=scope.get("query_string", b""),
            headers=headers,
            body=body,
            now=time.time(),
        )
        if not caller.allows(endpoint):
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
