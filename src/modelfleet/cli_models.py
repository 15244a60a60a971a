"""``modelfleet models`` and ``modelfleet push``: what a model source holds, and putting a
model into one (added to the ``modelfleet`` command group by :mod:`modelfleet.cli`)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
import httpx

from modelfleet.config import Settings, format_size

DEFAULT_SOURCE = Settings.model_fields["model_source"].default
_SOURCE_HELP = (
    "The model source: a folder, file:// URI, s3://bucket/prefix/, az://container/prefix/ or "
    "gs://bucket/prefix/ (credentials and endpoints as for serve)."
)


_source_option = click.option(
    "--source",
    envvar="MODELFLEET_MODEL_SOURCE",
    default=DEFAULT_SOURCE,
    show_default=True,
    help=_SOURCE_HELP + " [env: MODELFLEET_MODEL_SOURCE]",
)


def _source(uri: str) -> Any:
    """The model source at ``uri``, or a one-line error and exit 2."""
    from modelfleet.errors import ModelfleetError
    from modelfleet.source import ModelSource

    try:
        return ModelSource(uri, timeout_s=30.0, retries=2)
    except ModelfleetError as exc:
        _fail(exc.message)


def _fail(message: str, code: int = 2) -> Any:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _held(url: str, token: str | None) -> dict[str, list[str]] | None:
    """Per target model, the instances of the server at ``url`` (its admin listener) that
    hold it in memory; None if the server does not answer."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(f"{url.rstrip('/')}/admin/instances", headers=headers, timeout=10)
        response.raise_for_status()
        instances = response.json()["instances"]
    except (httpx.HTTPError, ValueError, KeyError):
        return None
    held: dict[str, list[str]] = {}
    for instance in instances:
        for model in instance.get("loaded", []):
            where = f"{instance['endpoint']}/{instance['id']}"
            held.setdefault(model["name"], []).append(where)
    return held


@click.command(
    short_help="List the artifacts of a model source, with sizes and where a server holds them."
)
@_source_option
@click.option(
    "--prefix",
    default="",
    show_default=True,
    help="Only the artifacts under this folder of the source.",
)
@click.option(
    "--page", type=click.IntRange(min=1), default=1, show_default=True, help="Which page to print."
)
@click.option(
    "--page-size",
    type=click.IntRange(min=1, max=10_000),
    default=100,
    show_default=True,
    help="Artifacts a page.",
)
@click.option(
    "--url",
    default="http://127.0.0.1:8081",
    show_default=True,
    help="A server's admin listener, asked which models it holds in memory (left out "
    "if it does not answer).",
)
@click.option(
    "--token",
    envvar="MODELFLEET_TOKEN",
    help="An admin bearer token, for a server with --auth token (default: none) "
    "[env: MODELFLEET_TOKEN].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the page as JSON.")
def models(
    source: str,
    prefix: str,
    page: int,
    page_size: int,
    url: str,
    token: str | None,
    as_json: bool,
) -> None:
    """List the artifacts in a model source, a page at a time, with their sizes and the
    instances of a running server that hold each in memory."""
    from modelfleet.errors import ModelfleetError

    store = _source(source)
    try:
        listed = sorted(store.list(prefix), key=lambda info: info.target_model)
    except ModelfleetError as exc:
        _fail(exc.message)
    pages = max(1, -(-len(listed) // page_size))
    shown = listed[(page - 1) * page_size : page * page_size]
    held = _held(url, token)
    rows = [
        {
            "model": info.target_model,
            "bytes": info.size,
            **({"loaded_on": held.get(info.target_model, [])} if held is not None else {}),
        }
        for info in shown
    ]
    total = sum(info.size for info in listed)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "source": source,
                    "page": page,
                    "pages": pages,
                    "artifacts": len(listed),
                    "bytes": total,
                    "models": rows,
                },
                indent=2,
            )
        )
        return
    if not listed:
        click.echo(f"no artifacts in {source}" + (f" under {prefix}" if prefix else ""))
        return
    table = [("model", "size", *(("loaded on",) if held is not None else ()))]
    for row in rows:
        loaded = ", ".join(row.get("loaded_on", [])) or "-"
        table.append(
            (row["model"], format_size(row["bytes"]), *((loaded,) if held is not None else ()))
        )
    widths = [max(len(r[c]) for r in table) for c in range(len(table[0]))]
    for r in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    click.echo(
        f"page {page} of {pages}: {len(shown)} of {len(listed)} artifacts"
        f" ({format_size(total)} in all)"
        + ("" if held is not None else f"; no server answered at {url}")
    )


@click.command(short_help="Package a model folder as model.tar.gz and upload it to a model source.")
@click.argument("file", type=click.Path(exists=True, path_type=Path))
@click.argument("target")
@_source_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def push(file: Path, target: str, source: str, quiet: bool) -> None:
    """Upload FILE to the model source as the target model TARGET. A folder is packaged as
    SageMaker packages models (model.tar.gz, the folder's contents at its root) and goes to
    TARGET/model.tar.gz unless TARGET names an archive. The upload is all or nothing."""
    from modelfleet.errors import ModelfleetError
    from modelfleet.source.push import archive_name, folder_bytes, package

    store = _source(source)
    name = archive_name(target, file.is_dir())
    try:
        with tempfile.TemporaryDirectory(prefix="modelfleet-push-") as scratch:
            upload = file
            if file.is_dir():
                upload = Path(scratch) / "model.tar.gz"
                with click.progressbar(
                    length=folder_bytes(file),
                    label="packaging",
                    show_pos=False,
                    hidden=quiet,
                    file=sys.stderr,
                ) as bar:
                    package(file, upload, bar.update)
            size = upload.stat().st_size
            with click.progressbar(
                length=size, label=f"uploading {format_size(size)}", hidden=quiet, file=sys.stderr
            ) as bar:
                info = store.put(name, upload, progress=bar.update)
    except ModelfleetError as exc:
        _fail(exc.message)
    except OSError as exc:
        _fail(f"cannot read {file}: {exc}")
    click.echo(f"pushed {name} ({format_size(info.size)}) to {source}")
    click.echo(f"invoke it with the target model {name}")
