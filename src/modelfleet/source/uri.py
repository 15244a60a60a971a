"""Model-source URIs: parse them, read the environment once, and build the obstore stores.

Supported forms:

- a folder path (``./models``, ``/srv/models``) or a ``file://`` URI (``file:///srv/models``):
  a :class:`obstore.store.LocalStore` rooted at the folder, which must exist;
- ``s3://bucket/prefix/``: an :class:`obstore.store.S3Store` for S3 or any S3-compatible server,
  configured from ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN`` and ``AWS_REGION``/``AWS_DEFAULT_REGION``.
  Without keys in the environment, the standard AWS credential chain applies through boto3
  (the ``aws`` extra) and obstore's credential-provider hook for boto3 sessions: shared config
  and credentials files with profiles (``AWS_PROFILE``), SSO, web identity, container and
  instance roles; the profile's region too. Without boto3, obstore's own chain applies (web
  identity, container and instance roles).
- ``az://container/prefix/`` (or ``azure://``): an :class:`obstore.store.AzureStore`, which reads
  the ``AZURE_*`` variables itself (account name and key, SAS token, service principal,
  workload or managed identity, Azure CLI); ``AZURE_STORAGE_ENDPOINT`` points it elsewhere
  (Azurite).
- ``gs://bucket/prefix/``: an :class:`obstore.store.GCSStore`, which reads the ``GOOGLE_*``
  variables itself (service account, application default credentials, ``GOOGLE_BASE_URL``).

Plain-http endpoints are accepted only for loopback hosts (``127.0.0.0/8``, ``::1``,
``localhost``) or when ``allow_http`` is set: credentials and models must not cross a network
unencrypted by accident.

Two stores are built for S3: one for metadata (head, list) whose requests must finish within
``timeout_s``, and one for downloads where ``timeout_s`` bounds connecting and each read (a large
model may take minutes; a stalled one fails after ``timeout_s``). Each retries up to ``retries``
times with exponential backoff (timeouts, connection errors, 5xx).
"""

from __future__ import annotations

import ipaddress
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from obstore.exceptions import BaseError as ObstoreBaseError
from obstore.store import AzureStore, GCSStore, LocalStore, S3Store

from modelfleet.errors import InvalidTargetModelError, SourceError
from modelfleet.source.target import validate_target_model

if TYPE_CHECKING:
    from obstore.store import (
        AzureConfig,
        ClientConfig,
        GCSConfig,
        ObjectStore,
        RetryConfig,
        S3Config,
        S3Credential,
    )

__all__ = ["SUPPORTED_SCHEMES", "SourceStores", "error_detail", "is_loopback_host", "open_stores"]

SUPPORTED_SCHEMES = ("file", "s3", "az", "gs")

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")

_DOWNLOAD_DEADLINE = timedelta(hours=24)
"""Overall cap of one download request; stalls are caught sooner by the per-read timeout."""

_S3_CREDENTIAL_ENV = {
    "AWS_ACCESS_KEY_ID": "access_key_id",
    "AWS_SECRET_ACCESS_KEY": "secret_access_key",
    "AWS_SESSION_TOKEN": "session_token",
}


@dataclass(frozen=True, slots=True)
class SourceStores:
    """The obstore stores behind one model source (the same store twice for a folder)."""

    metadata: ObjectStore
    data: ObjectStore
    kind: str
    """``"local"``, ``"s3"``, ``"az"`` or ``"gs"``."""
    identity: str
    """What names the source's objects: ``file://<resolved folder>``, or
    ``s3://<endpoint or "aws">/<bucket>/<prefix>`` (the disk cache keys entries by it)."""


def local_folder(uri: str) -> Path | None:
    """The folder a local source URI (a path or ``file://``) names, resolved; None for an
    object store."""
    scheme, sep, _ = uri.partition("://")
    if not sep or _SCHEME_RE.fullmatch(scheme) is None:
        return Path(uri).expanduser().resolve()
    if scheme.lower() == "file":
        return _file_uri_path(uri).resolve()
    return None


def open_stores(
    uri: str,
    *,
    timeout_s: float,
    retries: int,
    allow_http: bool,
    environ: Mapping[str, str] | None = None,
) -> SourceStores:
    """Build the stores for ``uri``; no network traffic happens here.

    ``environ`` defaults to ``os.environ``, read once, now.

    Raises:
        SourceError: unknown scheme, malformed URI, missing folder, or a forbidden http endpoint.
    """
    if timeout_s <= 0:
        raise SourceError(f"Model source timeout must be positive, got {timeout_s}.")
    if retries < 0:
        raise SourceError(f"Model source retries cannot be negative, got {retries}.")
    if not uri:
        raise SourceError("The model source URI is empty: use a folder path, file:// or s3://.")
    scheme, sep, _ = uri.partition("://")
    if not sep or _SCHEME_RE.fullmatch(scheme) is None:
        return _local_stores(uri, Path(uri).expanduser())
    scheme = scheme.lower()
    if scheme == "file":
        return _local_stores(uri, _file_uri_path(uri))
    env = dict(os.environ if environ is None else environ)
    if scheme == "s3":
        return _s3_stores(uri, env, timeout_s=timeout_s, retries=retries, allow_http=allow_http)
    if scheme in ("az", "azure", "gs"):
        kind = "gs" if scheme == "gs" else "az"
        return _cloud_stores(
            uri, kind, env, timeout_s=timeout_s, retries=retries, allow_http=allow_http
        )
    raise SourceError(
        f"Unsupported model source {uri!r}: the scheme {scheme!r} is not supported; use a "
        f"folder path or one of {', '.join(s + '://' for s in SUPPORTED_SCHEMES)}."
    )


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _file_uri_path(uri: str) -> Path:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise SourceError(
            f"Invalid model source {uri!r}: a file:// URI needs an absolute path "
            "(file:///srv/models), not a host."
        )
    if parts.query or parts.fragment:
        raise SourceError(f"Invalid model source {uri!r}: a file:// URI takes no query.")
    return Path(unquote(parts.path))


def _local_stores(uri: str, folder: Path) -> SourceStores:
    root = folder.resolve()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise SourceError(f"Invalid model source {uri!r}: the folder {root} {what}.")
    try:
        store = LocalStore(root)
    except ObstoreBaseError as exc:  # pragma: no cover - the folder was just checked
        raise SourceError(f"Invalid model source {uri!r}: {error_detail(exc)}") from exc
    return SourceStores(metadata=store, data=store, kind="local", identity=f"file://{root}")


def _s3_stores(
    uri: str,
    env: Mapping[str, str],
    *,
    timeout_s: float,
    retries: int,
    allow_http: bool,
) -> SourceStores:
    parts = urlsplit(uri)
    bucket = parts.netloc
    if not bucket or "@" in bucket or ":" in bucket:
        raise SourceError(f"Invalid model source {uri!r}: expected s3://bucket/prefix/.")
    if parts.query or parts.fragment:
        raise SourceError(f"Invalid model source {uri!r}: an s3:// URI takes no query.")
    prefix = parts.path.strip("/")
    if prefix:
        try:
            validate_target_model(prefix)
        except InvalidTargetModelError as exc:
            raise SourceError(f"Invalid model source {uri!r}: bad prefix: {exc.message}") from exc

    config: S3Config = {}
    for variable, key in _S3_CREDENTIAL_ENV.items():
        value = env.get(variable)
        if value:
            config[key] = value  # type: ignore[literal-required]
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        config["region"] = region
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    http = False
    if endpoint:
        http = _check_endpoint(uri, endpoint, allow_http=allow_http)
        config["endpoint"] = endpoint.rstrip("/")

    credentials = None
    if "access_key_id" not in config:
        credentials = _aws_credential_chain(uri, env)
        if credentials is not None and "region" not in config and credentials.region:
            config["region"] = credentials.region
    retry, metadata_client, data_client = _client_options(timeout_s, retries, http=http)
    try:
        metadata = S3Store(
            bucket,
            prefix=prefix or None,
            config=config,
            client_options=metadata_client,
            retry_config=retry,
            credential_provider=credentials,
        )
        data = S3Store(
            bucket,
            prefix=prefix or None,
            config=config,
            client_options=data_client,
            retry_config=retry,
            credential_provider=credentials,
        )
    except (ObstoreBaseError, ValueError) as exc:
        raise SourceError(f"Invalid model source {uri!r}: {error_detail(exc)}") from exc
    where = config.get("endpoint") or "aws"
    identity = f"s3://{where}/{bucket}/{prefix}"
    return SourceStores(metadata=metadata, data=data, kind="s3", identity=identity)


def _client_options(
    timeout_s: float, retries: int, *, http: bool
) -> tuple[RetryConfig, ClientConfig, ClientConfig]:
    """The retries, and the client options of the metadata and the download stores."""
    timeout = timedelta(seconds=timeout_s)
    retry: RetryConfig = {
        "max_retries": retries,
        "backoff": {
            "init_backoff": timedelta(milliseconds=100),
            "max_backoff": timedelta(seconds=min(15.0, max(0.1, timeout_s))),
            "base": 2,
        },
    }
    metadata_client: ClientConfig = {"timeout": timeout, "connect_timeout": timeout}
    data_client: ClientConfig = {
        "timeout": _DOWNLOAD_DEADLINE,
        "connect_timeout": timeout,
        "read_timeout": timeout,
    }
    if http:
        metadata_client["allow_http"] = True
        data_client["allow_http"] = True
    return retry, metadata_client, data_client


class AwsCredentialChain:
    """obstore's credential provider for S3 stores: the standard AWS chain of a boto3 session
    (``obstore.auth.boto3.Boto3CredentialProvider``), asked at the first request that needs
    credentials, not when the store is built (the chain may call an instance's metadata
    service or STS). The profile is read when the chain is made, so a missing one fails fast.
    """

    def __init__(self, profile: str | None) -> None:
        import boto3

        self.session = boto3.Session(profile_name=profile)  # files only; ProfileNotFound
        self.region: str | None = self.session.region_name
        self._provider: Any = None
        self._lock = threading.Lock()

    def __call__(self) -> S3Credential:
        with self._lock:
            if self._provider is None:
                from obstore.auth.boto3 import Boto3CredentialProvider

                try:
                    # refreshed well before temporary credentials (STS, SSO) expire
                    self._provider = Boto3CredentialProvider(self.session, ttl=_CREDENTIAL_TTL)
                except ValueError:
                    raise RuntimeError(
                        "no AWS credentials found: set AWS_ACCESS_KEY_ID and "
                        "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with a shared credentials or "
                        "config file (SSO included), or run with a web identity, container or "
                        "instance role"
                    ) from None
            credential: S3Credential = self._provider()
            return credential


_CREDENTIAL_TTL = timedelta(minutes=5)


def _aws_credential_chain(uri: str, env: Mapping[str, str]) -> AwsCredentialChain | None:
    """The boto3 chain when boto3 is installed (None: obstore's own chain)."""
    try:
        import boto3  # noqa: F401  (the aws extra)
    except ImportError:
        return None
    from botocore.exceptions import BotoCoreError

    try:
        return AwsCredentialChain(env.get("AWS_PROFILE") or None)
    except BotoCoreError as exc:  # a profile that no file defines, a malformed file
        raise SourceError(f"Invalid model source {uri!r}: {exc}") from exc


def _cloud_stores(
    uri: str,
    kind: str,
    env: Mapping[str, str],
    *,
    timeout_s: float,
    retries: int,
    allow_http: bool,
) -> SourceStores:
    """Azure Blob (``az``) or Google Cloud Storage (``gs``) stores; obstore reads the
    ``AZURE_*`` or ``GOOGLE_*`` variables (credentials, endpoint) itself."""
    parts = urlsplit(uri)
    container = parts.netloc
    what = "container" if kind == "az" else "bucket"
    if not container or "@" in container or ":" in container:
        raise SourceError(f"Invalid model source {uri!r}: expected {kind}://{what}/prefix/.")
    if parts.query or parts.fragment:
        raise SourceError(f"Invalid model source {uri!r}: a {kind}:// URI takes no query.")
    prefix = parts.path.strip("/")
    if prefix:
        try:
            validate_target_model(prefix)
        except InvalidTargetModelError as exc:
            raise SourceError(f"Invalid model source {uri!r}: bad prefix: {exc.message}") from exc
    variables = (
        ("AZURE_STORAGE_ENDPOINT", "AZURE_ENDPOINT") if kind == "az" else ("GOOGLE_BASE_URL",)
    )
    endpoint = next((env[v] for v in variables if env.get(v)), None)
    http = _check_endpoint(uri, endpoint, allow_http=allow_http) if endpoint else False
    retry, metadata_client, data_client = _client_options(timeout_s, retries, http=http)
    stores: list[ObjectStore] = []
    try:
        for client in (metadata_client, data_client):
            if kind == "az":
                azure: AzureConfig = {"endpoint": endpoint} if endpoint else {}
                stores.append(
                    AzureStore(
                        container,
                        prefix=prefix or None,
                        config=azure,
                        client_options=client,
                        retry_config=retry,
                    )
                )
            else:
                google: GCSConfig = {"base_url": endpoint} if endpoint else {}
                stores.append(
                    GCSStore(
                        container,
                        prefix=prefix or None,
                        config=google,
                        client_options=client,
                        retry_config=retry,
                    )
                )
    except (ObstoreBaseError, ValueError) as exc:
        raise SourceError(f"Invalid model source {uri!r}: {error_detail(exc)}") from exc
    account = env.get("AZURE_STORAGE_ACCOUNT_NAME", "") if kind == "az" else ""
    where = endpoint or account or ("azure" if kind == "az" else "gcs")
    identity = f"{kind}://{where}/{container}/{prefix}"
    return SourceStores(metadata=stores[0], data=stores[1], kind=kind, identity=identity)


def _check_endpoint(uri: str, endpoint: str, *, allow_http: bool) -> bool:
    """Validate an object store's endpoint; return whether it is plain http (and allowed)."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SourceError(
            f"Invalid endpoint {endpoint!r} for model source {uri!r}: expected "
            "https://host[:port] or http://host[:port] (AWS_ENDPOINT_URL, "
            "AZURE_STORAGE_ENDPOINT, GOOGLE_BASE_URL)."
        )
    if parts.scheme == "https":
        return False
    if allow_http or is_loopback_host(parts.hostname):
        return True
    raise SourceError(
        f"Refusing plain-http endpoint {endpoint!r} for model source {uri!r}: http is "
        "allowed only for loopback hosts; use https, or set allow_http "
        "(--allow-http, MODELFLEET_ALLOW_HTTP=true) for a trusted network."
    )


def error_detail(exc: BaseException, *, limit: int = 600) -> str:
    """An exception's message on one line, without obstore's multi-line debug dump."""
    text = str(exc).split("Debug source:", 1)[0]
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text or type(exc).__name__
