"""The benchmark's hostile-request contenders: shapes that get the status they claim, and
report rows with honest verdicts (fed fake numbers; the benchmark runs via `make bench`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.hostile import CONFIG, ORDINARY_PATH, SHAPES, raw_request
from gateway.pathnorm import AmbiguousPath, normalize_path
from tests.conftest import GatewayFactory
from tests.test_bench_smoke import _results


def test_every_shape_fits_the_default_head_limit() -> None:
    for shape in SHAPES.values():
        assert len(raw_request(shape.path, shape.headers)) < 8190


async def test_every_shape_gets_the_status_it_claims(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    path = tmp_path / "hostile.yaml"
    path.write_text(CONFIG)
    gw = await make_gateway(config=None, env={"GATEWAY_CONFIG": str(path)})
    for name, shape in SHAPES.items():
        response = await gw.client.get(shape.path, headers=shape.headers)
        assert response.status == shape.status, name
    assert (await gw.client.get(ORDINARY_PATH)).status == 401
    with pytest.raises(AmbiguousPath, match="escapes"):  # the bound, before any decoding
        normalize_path(SHAPES["uri_escapes"].headers["X-Forwarded-Uri"])


def _hostile(ratios: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {"ordinary": {"status": 200, "rps": 1000.0, "cpu_us_per_request": 50.0},
                           "command": "gateway"}
    for name, ratio in ratios.items():
        out[name] = {"status": SHAPES[name].status, "rps": 1000.0 / ratio,
                     "cpu_us_per_request": 50.0 * ratio, "over_ordinary": ratio}
    return out


def test_hostile_targets_and_section(tmp_path: Path) -> None:
    results = _results()
    ratios = {name: 1.5 for name in SHAPES}
    ratios["cookie_semicolons"] = 40.0
    results["hostile"] = _hostile(ratios)
    results["hostile_cost"] = {"ordinary_us": {"min": 16.0, "median": 17.0},
                               "uri_escapes_us": {"min": 20.0, "median": 21.0},
                               "uri_escapes_over_ordinary": 1.25, "command": "micro"}
    targets = {t["name"]: t for t in report.evaluate(results)}
    cookie = targets[f"hostile: {SHAPES['cookie_semicolons'].title} / ordinary (CPU)"]
    assert (cookie["value"], cookie["met"]) == (40.0, False)
    escapes = targets[f"hostile: {SHAPES['uri_escapes'].title} / ordinary (CPU)"]
    assert escapes["met"] is True and "in-process 20.0 vs 16.0 us (1.25x)" in escapes["detail"]
    report.write(results, tmp_path / "results.json", tmp_path / "results.md")
    text = (tmp_path / "results.md").read_text()
    assert "## Hostile requests" in text
    assert "| 40.00x |" in text
