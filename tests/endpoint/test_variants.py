"""Endpoints and production variants from a config file, through real instance processes."""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

import httpx
import pytest

from modelfleet.endpoint.variants import EXAMPLE, ConfigError, load_config
from tests.artifacts import features, sklearn_artifact
from tests.servers import process_server

ROW = ",".join(f"{v:.4f}" for v in features(1, 1, 4)[0]).encode()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_the_documented_example_loads(tmp_path: Path) -> None:
    router, endpoints = load_config(write(tmp_path, EXAMPLE), {"cache_dir": str(tmp_path)})
    assert router.port == 8080
    assert [e.name for e in endpoints] == ["recommendations", "fraud"]
    current, candidate = endpoints[0].variants
    assert (current.name, current.weight, current.settings.instances) == ("current", 3.0, 2)
    assert candidate.settings.memory_limit == 1024**3  # its own
    assert current.settings.memory_limit == 2 * 1024**3  # the file's default
    assert current.settings.cache_dir == tmp_path / "recommendations" / "current"
    assert current.settings.endpoint_name == "recommendations"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port = 1\n", "at least one \\[\\[endpoints\\]\\]"),
        ("[[endpoints]]\nname = 'a'\n", "at least one \\[\\[endpoints.variants\\]\\]"),
        (
            "[[endpoints]]\nname='a'\n[[endpoints.variants]]\nname='v'\n"
            "[[endpoints.variants]]\nname='v'\n",
            "variant names repeat",
        ),
        ("[[endpoints]]\nname='a'\n[[endpoints.variants]]\nname='v'\nweight=0\n", "sum to 0"),
        ("[[endpoints]]\nname='a'\n[[endpoints.variants]]\nname='v'\nport=9\n", "router settings"),
        (
            "[[endpoints]]\nname='a'\n[[endpoints.variants]]\nname='v'\nmemory_limit='lots'\n",
            "memory_limit",
        ),
        ("[[endpoints]]\nname='a'\n[[endpoints.variants]]\nname='v'\nbogus=1\n", "bogus"),
        ("[[endpoints]]\nname='a'\nshards=2\n[[endpoints.variants]]\nname='v'\n", "unknown keys"),
        ("[[endpoints]\n", "Cannot read"),
        ("[[endpoints]]\nname='..'\n[[endpoints.variants]]\nname='v'\n", "letters, digits"),
        ("[[endpoints]]\nname='a'\n[[endpoints.variants]]\nname='v/w'\n", "letters, digits"),
        ("[[endpoints]]\nname='a'\n[[endpoints.variants]]\nname='v'\nweight=inf\n", "weight"),
        (
            "[[endpoints]]\nname='a'\n[[endpoints.variants]]\nname='v'\ncache_dir='/tmp/x'\n"
            "[[endpoints.variants]]\nname='w'\ncache_dir='/tmp/x'\n",
            "share the cache folder",
        ),
    ],
)
def test_config_errors_say_where(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), {})


@pytest.mark.slow
def test_weighted_variants_and_the_target_variant_header(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "m").mkdir(parents=True)
    (source / "m" / "model.tar.gz").write_bytes(sklearn_artifact(seed=1, n_features=4))
    config = tmp_path / "fleet.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            model_source = "{source}"
            cache_dir = "{tmp_path / "cache"}"

            [[endpoints]]
            name = "ab"
            [[endpoints.variants]]
            name = "A"
            weight = 3
            [[endpoints.variants]]
            name = "B"
            weight = 1

            [[endpoints]]
            name = "solo"
            [[endpoints.variants]]
            name = "only"
            """
        )
    )
    log = tmp_path / "server.log"
    with (
        process_server(["--config", str(config)], log=log) as server,
        httpx.Client(base_url=server.url) as http,
    ):

        def invoke(endpoint: str, variant: str | None = None) -> httpx.Response:
            headers = {"X-Amzn-SageMaker-Target-Model": "m/model.tar.gz"}
            headers["Content-Type"] = "text/csv"
            if variant is not None:
                headers["X-Amzn-SageMaker-Target-Variant"] = variant
            return http.post(f"/endpoints/{endpoint}/invocations", content=ROW, headers=headers)

        served = Counter()
        answers = set()
        for _ in range(2000):
            response = invoke("ab")
            assert response.status_code == 200
            served[response.headers["x-amzn-invoked-production-variant"]] += 1
            answers.add(response.content)
        assert set(served) == {"A", "B"}
        assert abs(served["A"] / 2000 - 0.75) <= 0.05, served
        assert len(answers) == 1  # both variants serve the same model here

        for _ in range(20):
            pinned = invoke("ab", "B")
            assert pinned.status_code == 200
            assert pinned.headers["x-amzn-invoked-production-variant"] == "B"
        unknown = invoke("ab", "C")
        assert unknown.status_code == 400
        assert "Target variant 'C' does not exist" in unknown.json()["message"]

        solo = invoke("solo")
        assert solo.status_code == 200
        assert solo.headers["x-amzn-invoked-production-variant"] == "only"
        assert invoke("nope").status_code == 400

        view = httpx.get(f"{server.admin_url}/admin/instances").json()
        assert view["endpoints"] == ["ab", "solo"]
        tags = sorted((i["endpoint"], i["variant"], i["state"]) for i in view["instances"])
        assert tags == [("ab", "A", "up"), ("ab", "B", "up"), ("solo", "only", "up")]
        # A request that fails is counted on the variant that failed it.
        headers = {"X-Amzn-SageMaker-Target-Model": "gone/model.tar.gz"}
        headers["X-Amzn-SageMaker-Target-Variant"] = "B"
        assert (
            http.post("/endpoints/ab/invocations", content=ROW, headers=headers).status_code == 400
        )
        metrics = httpx.get(f"{server.admin_url}/metrics").text
        assert 'variant="A"' in metrics
        assert 'variant="B"' in metrics
        errors = {
            line.split('variant="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("modelfleet_invocation_4xx_errors_total{")
            and 'endpoint="ab"' in line
            and 'instance="router"' in line
        }
        assert errors["B"] == 1  # the missing model, on B
        assert errors["A"] == 1  # the unknown variant C: before any variant, on the first
