"""The live dashboard at ``/dashboard`` on the admin listener.

Server-rendered HTML with no JavaScript build and no library: the page is whole as served
(charts are inline SVG drawn here), and a dozen lines of inline script fetch
``/dashboard/fragment`` every two seconds and swap it in, so it updates live. What it shows
is what ``/admin/instances`` answers (the same call builds both), the router's per-model
counts (:mod:`modelfleet.endpoint.modelstats`) and a history of each endpoint's totals,
sampled every 10 s for the last hour.

Every number has a ``data-field`` attribute (and its row a ``data-instance`` or
``data-model``), so a test can read what the page shows and compare it with the API.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from html import escape
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from modelfleet.config import format_size
from modelfleet.endpoint.modelstats import ModelStats

SAMPLE_S = 10.0
HISTORY = 360  # an hour of samples
_TOP_MODELS = 10
_EVICTIONS = 20
_CHART_W, _CHART_H = 560, 120


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # epoch seconds
    invocations: int
    hits: int
    misses: int


class Dashboard:
    """The dashboard of one server: its history sampler and its pages."""

    def __init__(
        self,
        fleet: Callable[[], Awaitable[dict[str, Any]]],
        stats: Callable[[], Mapping[str, ModelStats]],
    ) -> None:
        self._fleet = fleet  # what /admin/instances answers
        self._stats = stats  # per endpoint, the router's per-model counts
        self.history: dict[str, deque[Sample]] = {}

    def sample(self) -> None:
        """Note each endpoint's totals now."""
        now = time.time()
        for name, stats in self._stats().items():
            total = stats.total
            samples = self.history.setdefault(name, deque(maxlen=HISTORY))
            samples.append(Sample(now, total.invocations, total.hits, total.misses))

    async def run(self) -> None:
        """Sample every ``SAMPLE_S`` seconds, forever."""
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_S)

    async def view(self) -> dict[str, Any]:
        """Everything the page shows, as data (``/dashboard/data``)."""
        fleet = await self._fleet()
        stats = self._stats()
        evictions = [
            {**e, "instance": f"{i['endpoint']}/{i['id']}"}
            for i in fleet["instances"]
            for e in i.get("evictions", [])
        ]
        evictions.sort(key=lambda e: e["at"], reverse=True)
        return {
            **fleet,
            "totals": {
                name: {
                    "invocations": s.total.invocations,
                    "hits": s.total.hits,
                    "misses": s.total.misses,
                    "errors": s.total.errors_4xx + s.total.errors_5xx,
                }
                for name, s in stats.items()
            },
            "top_models": {
                name: [s.stats(m) for m in s.top_models()[:_TOP_MODELS]]
                for name, s in stats.items()
            },
            "evictions": evictions[:_EVICTIONS],
            "history": {
                name: [[x.at, x.invocations, x.hits, x.misses] for x in samples]
                for name, samples in self.history.items()
            },
            "at": time.time(),
        }

    async def page(self, request: Request) -> Response:
        return HTMLResponse(_PAGE.replace("{{fragment}}", render(await self.view())))

    async def fragment(self, request: Request) -> Response:
        return HTMLResponse(render(await self.view()))

    async def data(self, request: Request) -> Response:
        return JSONResponse(await self.view())


def render(view: dict[str, Any]) -> str:
    """The page's live part for ``view``."""
    parts = [f'<p class="muted">updated <span id="updated">{_clock(view["at"])}</span></p>']
    for endpoint in view["endpoints"]:
        totals = view["totals"].get(endpoint, {})
        looked_up = totals.get("hits", 0) + totals.get("misses", 0)
        ratio = totals.get("hits", 0) / looked_up if looked_up else None
        parts.append(
            f'<section data-endpoint="{escape(endpoint)}"><h2>Endpoint {escape(endpoint)}</h2>'
            '<div class="cards">'
            + _card("invocations", totals.get("invocations", 0), endpoint)
            + _card("hit ratio", f"{ratio:.3f}" if ratio is not None else "-", endpoint)
            + _card("errors", totals.get("errors", 0), endpoint)
            + "</div>"
            + _charts(view["history"].get(endpoint, []))
            + _instances([i for i in view["instances"] if i["endpoint"] == endpoint])
            + _top_models(view["top_models"].get(endpoint, []))
            + "</section>"
        )
    parts.append(_evictions(view["evictions"]))
    return "".join(parts)


def _card(label: str, value: object, endpoint: str) -> str:
    field = label.replace(" ", "_")
    return (
        f'<div class="card"><div class="label">{escape(label)}</div>'
        f'<div class="value" data-field="{field}">{escape(str(value))}</div></div>'
    )


def _td(field: str, value: object, shown: str | None = None) -> str:
    """A cell whose ``data-value`` is the raw number and whose text is for people."""
    text = shown if shown is not None else ("-" if value is None else str(value))
    raw = "" if value is None else escape(str(value))
    return f'<td data-field="{field}" data-value="{raw}">{escape(text)}</td>'


def _seconds(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


def _bytes(value: object) -> str:
    return format_size(float(value)) if isinstance(value, int | float) else "-"


def _instances(instances: list[dict[str, Any]]) -> str:
    rows = []
    for i in instances:
        key = escape(f"{i['endpoint']}/{i['variant']}/{i['id']}")
        used, limit = i.get("memory_used_bytes"), i.get("memory_limit_bytes")
        disk, disk_limit = i.get("disk_used_bytes"), i.get("disk_limit_bytes")
        rows.append(
            f'<tr data-instance="{key}">'
            + _td("variant", i["variant"])
            + _td("id", i["id"])
            + _td("state", i["state"])
            + _td("in_flight", i.get("in_flight", 0))
            + _td("memory_used_bytes", used, f"{_bytes(used)} / {_bytes(limit)}")
            + _td("disk_used_bytes", disk, f"{_bytes(disk)} / {_bytes(disk_limit)}")
            + _td("loaded", len(i.get("loaded", [])))
            + _td("hits", i.get("hits"))
            + _td("misses", i.get("misses"))
            + _td("mean_load_s", *_mean(i.get("load_seconds")))
            + _td("mean_download_s", *_mean(i.get("download_seconds")))
            + "</tr>"
            + _models_row(i)
        )
    head = (
        "<tr><th>variant</th><th>instance</th><th>state</th><th>in flight</th><th>memory</th>"
        "<th>disk</th><th>models</th><th>hits</th><th>misses</th><th>load (mean s)</th>"
        "<th>download (mean s)</th></tr>"
    )
    return f'<h3>Instances</h3><table class="instances">{head}{"".join(rows)}</table>'


def _mean(totals: dict[str, float] | None) -> tuple[object, str]:
    if not totals or not totals.get("count"):
        return None, "-"
    mean = totals["sum"] / totals["count"]
    return round(mean, 6), f"{mean:.3f}"


def _models_row(instance: dict[str, Any]) -> str:
    """The instance's models in memory and on disk, folded under its row."""
    loaded = instance.get("loaded", [])
    on_disk = instance.get("on_disk", [])
    if not loaded and not on_disk:
        return ""
    memory = "".join(
        f'<tr data-model="{escape(m["name"])}">'
        + _td("name", m["name"])
        + _td("bytes", m["bytes"], _bytes(m["bytes"]))
        + _td("hits", m.get("hits"))
        + _td("idle_s", m.get("idle_s"), _seconds(m.get("idle_s")))
        + _td("load_s", m.get("load_s"), _seconds(m.get("load_s")))
        + _td("pinned", m.get("pinned"), "pinned" if m.get("pinned") else "")
        + "</tr>"
        for m in loaded
    )
    disk = "".join(f"<li>{escape(d['name'])} ({_bytes(d['bytes'])})</li>" for d in on_disk)
    count = instance.get("on_disk_count", len(on_disk))
    return (
        '<tr class="models"><td colspan="11"><details><summary>'
        f"{len(loaded)} in memory, {count} on disk</summary>"
        "<table><tr><th>model</th><th>bytes</th><th>hits</th><th>idle (s)</th>"
        f"<th>load (s)</th><th></th></tr>{memory}</table>"
        f'<ul class="disk">{disk}</ul></details></td></tr>'
    )


def _top_models(models: Iterable[dict[str, Any] | None]) -> str:
    rows = "".join(
        f'<tr data-model="{escape(m["model"])}">'
        + _td("model", m["model"])
        + _td("invocations", m["invocations"])
        + _td("hit_ratio", m["hit_ratio"])
        + _td("requests_per_s", m["requests_per_s_recent"], f"{m['requests_per_s_recent']:.2f}")
        + _td("model_latency_mean_s", m["model_latency_mean_s"])
        + _td("loads", m["loads"])
        + "</tr>"
        for m in models
        if m is not None
    )
    if not rows:
        return '<h3>Top models</h3><p class="muted">no invocation yet</p>'
    head = (
        "<tr><th>model</th><th>invocations</th><th>hit ratio</th><th>requests/s</th>"
        "<th>model latency (mean s)</th><th>loads</th></tr>"
    )
    return f'<h3>Top models by recent traffic</h3><table class="top">{head}{rows}</table>'


def _evictions(evictions: list[dict[str, Any]]) -> str:
    rows = "".join(
        "<tr>"
        + _td("at", e["at"], _clock(e["at"]))
        + _td("instance", e["instance"])
        + _td("model", e["model"])
        + _td("reason", e["reason"])
        + _td("bytes", e["bytes"], _bytes(e["bytes"]))
        + "</tr>"
        for e in evictions
    )
    if not rows:
        return '<h2>Last evictions</h2><p class="muted">none yet</p>'
    head = "<tr><th>at</th><th>instance</th><th>model</th><th>reason</th><th>bytes</th></tr>"
    return f'<h2>Last evictions</h2><table class="evictions">{head}{rows}</table>'


def _charts(samples: list[list[float]]) -> str:
    """Hit ratio and requests per second between samples, as two SVG line charts."""
    rates: list[tuple[float, float]] = []
    ratios: list[tuple[float, float]] = []
    for before, after in itertools.pairwise(samples):
        span = after[0] - before[0]
        if span <= 0:
            continue
        rates.append((after[0], (after[1] - before[1]) / span))
        looked_up = (after[2] - before[2]) + (after[3] - before[3])
        if looked_up:
            ratios.append((after[0], (after[2] - before[2]) / looked_up))
    return (
        '<div class="charts">'
        + _chart("requests per second, last hour", rates, None)
        + _chart("hit ratio, last hour", ratios, 1.0)
        + "</div>"
    )


def _chart(title: str, points: list[tuple[float, float]], top: float | None) -> str:
    if len(points) < 2:
        body = '<text x="10" y="60" class="muted">collecting (a point every 10 s)</text>'
        last = "-"
    else:
        start, end = points[0][0], points[-1][0]
        high = top if top is not None else max(max(v for _, v in points), 1e-9)
        xy = " ".join(
            f"{(t - start) / max(end - start, 1e-9) * (_CHART_W - 20) + 10:.1f},"
            f"{_CHART_H - 10 - v / high * (_CHART_H - 30):.1f}"
            for t, v in points
        )
        body = (
            f'<polyline fill="none" stroke="#2563eb" stroke-width="2" points="{xy}"/>'
            f'<text x="10" y="14" class="muted">max {high:.3g}</text>'
        )
        last = f"{points[-1][1]:.3g}"
    return (
        f"<figure><figcaption>{escape(title)}: <b>{last}</b></figcaption>"
        f'<svg width="{_CHART_W}" height="{_CHART_H}" role="img" aria-label="{escape(title)}">'
        f'<rect x="0" y="0" width="{_CHART_W}" height="{_CHART_H}" fill="#f8fafc"/>'
        f"{body}</svg></figure>"
    )


def _clock(epoch_s: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch_s))


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>modelfleet dashboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<style>
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #0f172a; }
h1 { font-size: 20px; } h2 { font-size: 17px; margin-top: 1.5em; } h3 { font-size: 15px; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { padding: 3px 10px; text-align: left; border-bottom: 1px solid #e2e8f0; }
th { background: #f1f5f9; font-weight: 600; }
.cards { display: flex; gap: 1em; } .card { border: 1px solid #e2e8f0; padding: .5em 1em; }
.card .value { font-size: 22px; font-weight: 600; } .label, .muted { color: #64748b; }
.charts { display: flex; gap: 1em; flex-wrap: wrap; } figure { margin: .5em 0; }
ul.disk { columns: 2; font-size: 12px; color: #475569; }
</style></head>
<body><h1>modelfleet</h1>
<main id="live">{{fragment}}</main>
<script>
"use strict";
async function refresh() {
  try {
    const answer = await fetch("/dashboard/fragment", {cache: "no-store"});
    if (answer.ok) {
      const open = new Set([...document.querySelectorAll("details[open]")]
        .map((d) => d.closest("tr").previousElementSibling.dataset.instance));
      document.getElementById("live").innerHTML = await answer.text();
      document.querySelectorAll("tr.models").forEach((row) => {
        if (open.has(row.previousElementSibling.dataset.instance)) {
          row.querySelector("details").open = true;
        }
      });
    }
  } catch (error) {
    document.getElementById("updated").textContent = "server not answering";
  }
}
setInterval(refresh, 2000);
</script></body></html>
"""
