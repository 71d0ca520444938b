"""Prometheus configuration, alert rules and their unit tests, checked with promtool."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[1]
PROMETHEUS = ROOT / "config" / "prometheus"

REQUIRED_ALERTS = {
    "ClerkGatewayDown",
    "ClerkGatewayFailOpen",
    "ClerkGatewayKeyFetchFailing",
    "ClerkGatewayKeysStale",
    "ClerkGatewayErrorRatioHigh",
    "ClerkGatewayDenyRatioHigh",
    "ClerkGatewayUnavailableDecisions",
    "ClerkGatewayIntrospectionErrors",
    "ClerkGatewayUpstreamErrorRatioHigh",
    "ClerkGatewayMachineTokenLookupsFailing",
    "ClerkGatewayMachineTokenClientsThrottled",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
    )
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is required in CI (apt-get install prometheus)")
        pytest.skip("promtool not installed")
    return found


def _promtool(promtool: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


def _load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _rules() -> list[dict[str, Any]]:
    data = _load_yaml(PROMETHEUS / "alerts.yml")
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_alert_rules_are_valid(promtool: str) -> None:
    result = _promtool(promtool, "check", "rules", "config/prometheus/alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_prometheus_config_is_valid(promtool: str) -> None:
    # Also resolves rule_files relative to prometheus.yml and checks the rules it finds there.
    result = _promtool(promtool, "check", "config", "config/prometheus/prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_alert_rules_unit_tests_pass(promtool: str) -> None:
    result = _promtool(promtool, "test", "rules", "config/prometheus/alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_required_alerts_exist_with_severity_and_summary() -> None:
    rules = _rules()
    names = {rule["alert"] for rule in rules if "alert" in rule}
    assert names >= REQUIRED_ALERTS, REQUIRED_ALERTS - names
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_unit_tests_prove_the_key_alerts_fire() -> None:
    """The promtool unit tests must expect a firing alert, not only silence, for these."""
    spec = _load_yaml(PROMETHEUS / "alerts.test.yml")
    assert spec["rule_files"] == ["alerts.yml"]
    firing: set[str] = set()
    silent: set[str] = set()
    for test in spec["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    for name in ("ClerkGatewayKeyFetchFailing", "ClerkGatewayErrorRatioHigh"):
        assert name in firing, name
        assert name in silent, f"{name} should also be shown not to fire early or on low traffic"
    assert firing <= {rule["alert"] for rule in _rules()}


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """Every Grafana query, with its variables filled in, parses as PromQL."""
    with (ROOT / "config" / "grafana" / "dashboard.json").open(encoding="utf-8") as f:
        dashboard = json.load(f)

    def panels(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for item in items:
            out.append(item)
            out.extend(panels(item.get("panels", [])))
        return out

    substitutions = {
        "$__rate_interval": "1m",
        "$__interval": "1m",
        "$job": ".*",
        "$instance": ".*",
    }
    rules = []
    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in substitutions.items():
                expr = expr.replace(variable, value)
            assert not re.search(r"\$\w", expr), f"unhandled variable in {expr}"
            rules.append(
                {"record": f"dashboard:panel{panel['id']}:{target['refId']}", "expr": expr}
            )
    assert rules
    rule_file = tmp_path / "dashboard_rules.yml"
    rule_file.write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8"
    )
    result = _promtool(promtool, "check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr
