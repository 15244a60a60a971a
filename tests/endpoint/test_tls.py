"""HTTPS: ``serve --tls-cert/--tls-key`` with a self-signed certificate made here, and boto3
(signing with SigV4, as over HTTPS to SageMaker) trusting exactly that certificate."""

from __future__ import annotations

import datetime as dt
import gc
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import SSLError
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from modelfleet.cli import main
from tests.artifacts import sklearn_source
from tests.servers import ProcessServer, process_server

KEY = ("AKIDTLSTEST00001", "secret-for-the-tls-test")


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: (certificate, key) PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelfleet test")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[ProcessServer, Path]]:
    cert, key = self_signed(tmp_path)
    source = sklearn_source(tmp_path / "source", ["m/model.tar.gz"], n_features=4)
    credentials = tmp_path / "credentials.toml"
    credentials.write_text(
        f'[[keys]]\naccess_key_id = "{KEY[0]}"\nsecret_access_key = "{KEY[1]}"\n'
    )
    args = ["--model-source", str(source), "--cache-dir", str(tmp_path / "cache")]
    args += ["--tls-cert", str(cert), "--tls-key", str(key)]
    args += ["--auth", "sigv4", "--credentials-file", str(credentials)]
    with process_server(args, log=tmp_path / "server.log", tls_ca=cert) as server:
        yield server, cert


def runtime(url: str, verify: Any) -> Any:
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=KEY[0],
        aws_secret_access_key=KEY[1],
        verify=verify,
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )


def test_boto3_over_https_with_sigv4(tls_server: tuple[ProcessServer, Path]) -> None:
    server, cert = tls_server
    assert server.url.startswith("https://")
    trusting = runtime(server.url, str(cert))
    answer = trusting.invoke_endpoint(
        EndpointName="default", TargetModel="m/model.tar.gz", ContentType="text/csv", Body="1,2,3,4"
    )
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    trusting.close()  # its idle TLS connection would hold the server's shutdown
    # a client that does not trust the certificate refuses the connection
    untrusting = runtime(server.url, True)
    with pytest.raises(SSLError):
        untrusting.invoke_endpoint(
            EndpointName="default", TargetModel="m/model.tar.gz", Body="1,2,3,4"
        )
    untrusting.close()
    # The failed handshake's socket sits in reference cycles of the exception's traceback:
    # collected now, it closes, instead of holding the server's TLS shutdown (up to 30 s).
    gc.collect()
    # plain HTTP to the HTTPS port gets no answer
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url.replace("https://", "http://") + "/ping", timeout=5)
    # the server presents the certificate it was given
    pem = ssl.get_server_certificate(("127.0.0.1", server.port))
    assert x509.load_pem_x509_certificate(pem.encode()) == x509.load_pem_x509_certificate(
        cert.read_bytes()
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-cert", "cert.pem"], "tls_cert and tls_key go together"),
        (["--tls-cert", "cert.pem", "--tls-key", "cert.pem"], "cannot serve HTTPS"),
    ],
)
def test_a_certificate_that_cannot_serve_stops_the_start(
    tmp_path: Path, args: list[str], message: str
) -> None:
    cert, _ = self_signed(tmp_path)
    args = [a.replace("cert.pem", str(cert)) for a in args]
    result = CliRunner().invoke(
        main, ["serve", "--cache-dir", str(tmp_path / "cache"), "--port", "0", *args]
    )
    assert result.exit_code == 2
    assert message in result.output
