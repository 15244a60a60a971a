"""Azurite, the Azure Storage emulator (an npm package that scripts/test installs under
tests/azurite), started on a free loopback port and stopped by its PID."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.s3server import HOST, free_port

BIN = Path(__file__).parent / "azurite" / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
# Azurite's documented development account key (the same in every Azurite)
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class Azurite:
    """The blob service of Azurite in a child process."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}/{ACCOUNT}"
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={self.url};"
        )

    def env(self) -> dict[str, str]:
        """What a modelfleet server needs to read az:// sources from it."""
        return {
            "AZURE_STORAGE_ACCOUNT_NAME": ACCOUNT,
            "AZURE_STORAGE_ACCOUNT_KEY": KEY,
            "AZURE_STORAGE_ENDPOINT": self.url,
        }

    def start(self) -> Azurite:
        if shutil.which("node") is None or not BIN.exists():
            raise RuntimeError(f"Azurite is not installed: run bash scripts/test (needs {BIN})")
        argv = [str(BIN), "--blobHost", HOST, "--blobPort", str(self.port)]
        argv += ["--location", str(self.folder), "--silent", "--disableTelemetry", "--loose"]
        argv += ["--skipApiVersionCheck"]
        log = (self.folder.parent / "azurite.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, env=dict(os.environ))
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("Azurite exited at start")
            try:
                httpx.get(f"http://{HOST}:{self.port}/", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("Azurite did not start within 60 s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
