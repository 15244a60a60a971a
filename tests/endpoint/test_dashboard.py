"""The dashboard at ``/dashboard`` in headless Chromium (Debian's, driven by Playwright) against
a real fleet of two instance processes: the numbers it shows are those of ``/admin/instances``,
it updates after new traffic without a reload, it lists an eviction with its reason, and the
browser's console shows no error.

``MODELFLEET_DASHBOARD_SCREENSHOT=PATH`` saves a screenshot of the page (the one in docs/).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.artifacts import features, sklearn_source
from tests.servers import ProcessServer, fleet_instances, process_server

ROW = ",".join(f"{v:.4f}" for v in features(1, 1, 4)[0]).encode()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# as this machine's Chromium must run here: no sandbox (root), no GPU, nothing but loopback
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.slow


@pytest.fixture
def chromium() -> str:
    """Debian's Chromium. Missing where scripts/test could have installed it (root, apt-get)
    under CI: a failure; where it cannot be installed: skipped, saying why."""
    if CHROMIUM is None:
        installable = os.geteuid() == 0 and shutil.which("apt-get") is not None
        if installable and os.environ.get("CI"):
            pytest.fail("no Chromium although scripts/test installs it as root: see its log")
        why = "not root" if os.geteuid() != 0 else "no apt-get"
        pytest.skip(f"no Chromium, and scripts/test cannot install it here ({why})")
    return CHROMIUM


def invoke(server: ProcessServer, model: str, times: int = 1) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for _ in range(times):
            answer = http.post(
                "/endpoints/default/invocations",
                content=ROW,
                headers={"X-Amzn-SageMaker-Target-Model": model, "Content-Type": "text/csv"},
            )
            assert answer.status_code == 200, answer.text


def shown(page: Any) -> dict[str, dict[str, str]]:
    """Per instance row: each field's raw value as the page holds it."""
    return page.evaluate(  # type: ignore[no-any-return]
        """() => Object.fromEntries([...document.querySelectorAll("tr[data-instance]")].map(
            (row) => [row.dataset.instance, Object.fromEntries([...row.querySelectorAll("td")]
                .map((td) => [td.dataset.field, td.dataset.value]))]))"""
    )


def test_the_dashboard_shows_the_fleet_and_updates_live(tmp_path: Path, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    models = [f"m{i}/model.tar.gz" for i in range(6)]
    source = sklearn_source(tmp_path / "source", models, 4)
    args = ["--model-source", str(source), "--cache-dir", str(tmp_path / "cache")]
    args += ["--instances", "2", "--log-level", "warning"]
    with process_server(args, log=tmp_path / "server.log") as server:
        for index, model in enumerate(models):
            invoke(server, model, times=index + 1)
        # an eviction with its reason: one model unloaded through its instance's contract
        holder = next(i for i in fleet_instances(server) if i["loaded"])
        unloaded = holder["loaded"][0]["name"]
        assert httpx.delete(f"{holder['url']}/models/{unloaded}", timeout=30).status_code == 200

        errors: list[str] = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(f"{server.admin_url}/dashboard")

                api = {
                    f"{i['endpoint']}/{i['variant']}/{i['id']}": i for i in fleet_instances(server)
                }
                rows = shown(page)
                assert set(rows) == set(api)
                for key, instance in api.items():
                    row = rows[key]
                    assert row["state"] == instance["state"]
                    assert int(row["hits"]) == instance["hits"]
                    assert int(row["misses"]) == instance["misses"]
                    assert int(row["loaded"]) == len(instance["loaded"])
                    assert int(row["memory_used_bytes"]) == instance["memory_used_bytes"]
                    assert int(row["disk_used_bytes"]) == instance["disk_used_bytes"]
                invocations = page.locator("[data-field=invocations]").first
                assert invocations.inner_text() == str(sum(range(1, 7)))
                evicted = page.locator("table.evictions tr", has_text=unloaded)
                assert "unload" in evicted.inner_text()
                top = page.locator("table.top tr[data-model]").first
                assert top.get_attribute("data-model") == models[-1]  # the most traffic

                invoke(server, models[0], times=10)  # new traffic: the page follows alone
                page.wait_for_function(
                    "n => document.querySelector('[data-field=invocations]').textContent == n",
                    arg=str(sum(range(1, 7)) + 10),
                    timeout=30_000,
                )
                target = os.environ.get("MODELFLEET_DASHBOARD_SCREENSHOT")
                page.locator("details").first.evaluate("d => d.open = true")
                page.screenshot(path=target or str(tmp_path / "dashboard.png"), full_page=True)
            finally:
                browser.close()
        assert errors == []
