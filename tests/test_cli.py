"""The commands for people: ``modelfleet models`` and ``modelfleet push`` against real model
sources (a folder; moto's S3-compatible server) and a real server, friendly one-line errors,
and ``--help`` that shows each flag's default."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from modelfleet.cli import main
from modelfleet.config import Settings
from tests.artifacts import features, joblib_bytes, sklearn_source, train_sklearn
from tests.servers import ThreadServer, free_port

ROW = ",".join(f"{v:.4f}" for v in features(1, 1, 4)[0]).encode()


def invoke(url: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{url}/endpoints/default/invocations",
        content=ROW,
        headers={"X-Amzn-SageMaker-Target-Model": model, "Content-Type": "text/csv"},
        timeout=120,
    )


def test_models_lists_a_source_by_page_and_where_a_server_holds_each(tmp_path: Path) -> None:
    names = [f"customer-{i}/model.tar.gz" for i in range(5)]
    source = sklearn_source(tmp_path / "source", names, 4)
    runner = CliRunner()
    alone = runner.invoke(
        main, ["models", "--source", str(source), "--page-size", "2", "--url", "http://127.0.0.1:1"]
    )
    assert alone.exit_code == 0, alone.output
    assert "customer-0/model.tar.gz" in alone.output
    assert "customer-2/model.tar.gz" not in alone.output
    assert "page 1 of 3: 2 of 5 artifacts" in alone.output
    assert "no server answered at http://127.0.0.1:1" in alone.output

    settings = Settings(
        model_source=str(source), cache_dir=tmp_path / "cache", port=0, admin_port=0
    )
    server = ThreadServer(settings).start()
    try:
        assert invoke(server.url, "customer-3/model.tar.gz").status_code == 200
        shown = runner.invoke(
            main,
            [
                "models",
                "--source",
                str(source),
                "--page",
                "2",
                "--page-size",
                "2",
                "--url",
                server.admin_url,
            ],
        )
    finally:
        server.stop()
    assert shown.exit_code == 0, shown.output
    line = next(x for x in shown.output.splitlines() if x.startswith("customer-3/"))
    assert line.split()[-1] == "default/0"  # held in memory by the server's instance
    assert "page 2 of 3" in shown.output


def test_push_of_a_200_mb_folder_shows_progress_and_the_model_answers(
    tmp_path: Path, s3_bucket: tuple[Any, str], aws_env: str
) -> None:
    s3, bucket = s3_bucket
    folder = tmp_path / "big-model"
    folder.mkdir()
    (folder / "model.joblib").write_bytes(joblib_bytes(train_sklearn(3, 4, 2)))
    with (folder / "weights.bin").open("wb") as weights:  # incompressible, as weights are
        for _ in range(200):
            weights.write(os.urandom(1024 * 1024))
    source = f"s3://{bucket}/models/"
    # in a terminal, as a person runs it: the bars redraw as bytes go
    output = run_in_terminal(
        [sys.executable, "-m", "modelfleet", "push", str(folder), "customer-9", "--source", source]
    )
    assert "pushed customer-9/model.tar.gz" in output, output
    assert "invoke it with the target model customer-9/model.tar.gz" in output
    uploading = re.findall(r"uploading 200\.\d MiB.*?(\d+)%", output)
    assert len(set(uploading)) >= 3, output  # several distinct percentages were drawn
    assert "packaging" in output
    head = s3.head_object(Bucket=bucket, Key="models/customer-9/model.tar.gz")
    assert head["ContentLength"] > 200 * 1024 * 1024

    settings = Settings(
        model_source=source,
        cache_dir=tmp_path / "cache",
        port=0,
        admin_port=0,
        memory_limit="1GiB",
    )
    server = ThreadServer(settings).start()
    try:
        answer = invoke(server.url, "customer-9/model.tar.gz")
    finally:
        server.stop()
    assert answer.status_code == 200, answer.text


def run_in_terminal(argv: list[str], timeout_s: float = 240.0) -> str:
    """Run ``argv`` with a pseudo-terminal as its output; what it wrote."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(argv, stdout=follower, stderr=follower, stdin=subprocess.DEVNULL)
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # the process closed its end
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
        process.wait(timeout=max(deadline - time.monotonic(), 1.0))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_push_to_a_local_folder_and_a_file_as_is(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    folder = tmp_path / "m"
    (folder / "code").mkdir(parents=True)
    (folder / "model.joblib").write_bytes(joblib_bytes(train_sklearn(1, 4, 2)))
    runner = CliRunner()
    done = runner.invoke(main, ["push", str(folder), "a/model.tar.gz", "--source", str(source)])
    assert done.exit_code == 0, done.output
    assert (source / "a" / "model.tar.gz").stat().st_size > 0
    file = source / "a" / "model.tar.gz"
    again = runner.invoke(main, ["push", str(file), "b/copy.tar.gz", "--source", str(source), "-q"])
    assert again.exit_code == 0, again.output
    assert (source / "b" / "copy.tar.gz").read_bytes() == file.read_bytes()
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = runner.invoke(main, ["push", str(empty), "c", "--source", str(source)])
    assert refused.exit_code == 2
    assert "holds no file to package" in refused.output


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["serve", "--model-source", "/nonexistent/models"],
            "the folder /nonexistent/models does not exist. Create it",
        ),
        (["models", "--source", "/nonexistent/models"], "does not exist"),
        (["push", ".", "x", "--source", "/nonexistent/models"], "does not exist"),
    ],
)
def test_a_missing_source_is_one_line(args: list[str], said: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert said in result.output
    assert "Traceback" not in result.output


def test_a_port_in_use_suggests_another(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        source = sklearn_source(tmp_path / "source", ["m/model.tar.gz"], 4)
        result = CliRunner().invoke(
            main,
            [
                "serve",
                "--model-source",
                str(source),
                "--port",
                str(port),
                "--admin-port",
                str(free_port()),
                "--state-dir",
                str(tmp_path / "state"),
            ],
        )
    assert result.exit_code == 2
    assert f"127.0.0.1:{port} is already in use" in result.output
    assert "--port" in result.output


def test_invoking_a_folder_or_an_unknown_endpoint_says_what_to_use(tmp_path: Path) -> None:
    source = sklearn_source(tmp_path / "source", ["iris/model.tar.gz"], 4)
    settings = Settings(
        model_source=str(source), cache_dir=tmp_path / "cache", port=0, admin_port=0
    )
    server = ThreadServer(settings).start()
    try:
        runner = CliRunner()
        folder = runner.invoke(main, ["invoke", "iris", "--url", server.url, "-d", ROW.decode()])
        unknown = runner.invoke(
            main,
            [
                "invoke",
                "iris/model.tar.gz",
                "--url",
                server.url,
                "--endpoint-name",
                "nope",
                "-d",
                ROW.decode(),
            ],
        )
    finally:
        server.stop()
    assert folder.exit_code == 1
    assert "Model 'iris' is a folder holding model.tar.gz: invoke 'iris/model.tar.gz'" in (
        folder.output
    )
    assert unknown.exit_code == 1
    assert "Endpoint 'nope' not found. Endpoints here: default." in unknown.output


def test_help_shows_every_command_in_full_and_each_flag_default() -> None:
    runner = CliRunner()
    top = runner.invoke(main, ["--help"], terminal_width=100)
    assert "Serve an endpoint from a model source" in top.output
    commands = top.output.split("Commands:", 1)[1]
    assert "..." not in commands  # no description cut short
    serve = runner.invoke(main, ["serve", "--help"], terminal_width=200).output
    for flag, default in [
        ("--memory-limit", "2.0 GiB"),
        ("--model-source", "./modelfleet-models"),
        ("--eviction-policy", "lrfu"),
        ("--model-metrics-top", "50"),
    ]:
        line = next(x for x in serve.splitlines() if x.strip().startswith(flag))
        assert default in line, line
