"""Static checks of the deployment files: the wiring between services, ports and metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.peer_support import spellings

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "config"

IDENTITY_HEADERS = (
    "X-User-Id",
    "X-Org-Id",
    "X-Role",
    "X-Org-Slug",
    "X-Org-Permissions",
    "X-Session-Id",
    "X-Plan",
    "X-Features",
    "X-Actor-Id",
    "X-Token-Type",
    "X-Scopes",
    "X-Machine-Id",
    "X-Request-Id",
)

# Every metric the gateway exports (see the metrics module), with the series names Prometheus
# derives from counters and histograms.
_COUNTERS = (
    "decisions_total",
    "machine_token_lookups_total",
    "token_type_decisions_total",
    "upstream_errors_total",
    "key_fetches_total",
    "token_cache_lookups_total",
    "revocation_checks_total",
    "introspection_calls_total",
    "webhook_events_total",
    "fail_open_total",
    "forward_auth_fast_path_total",
    "resource_guards_total",
    "cors_preflights_total",
    "proxy_fast_path_total",
    "state_fallbacks_total",
)
_GAUGES = (
    "in_flight_requests",
    "keys",
    "key_last_success_timestamp_seconds",
    "token_cache_entries",
    "build_info",
)
_HISTOGRAMS = ("request_duration_seconds", "upstream_duration_seconds")
KNOWN_SERIES = (
    {f"clerk_gateway_{name}" for name in (*_COUNTERS, *_GAUGES)}
    | {
        f"clerk_gateway_{h}{suffix}"
        for h in _HISTOGRAMS
        for suffix in ("_bucket", "_sum", "_count")
    }
    | {"up"}
)

_PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "atan2", "inf", "nan", "Inf", "NaN",
}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """Return the metric names a PromQL expression selects (functions and labels excluded)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"'(?:[^'\\]|\\.)*'", "''", s)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range selectors and subqueries
    # Grouping clauses name labels, not metrics: drop them with their keyword.
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)  # Grafana variables
    s = re.sub(r"(?<![\w:])\d[\w.]*", " ", s)  # numbers and durations (5m, 1h30m, 0.99)
    s = re.sub(r"[A-Za-z_][\w]*\s*\(", "(", s)  # function calls
    return {t for t in re.findall(r"[A-Za-z_:][\w:]*", s) if t not in _PROMQL_KEYWORDS}


def _load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _port_of_listen(value: str) -> int:
    return int(value.rsplit(":", 1)[1])


# --------------------------------------------------------------------------------------------
# compose.yml + Traefik + Prometheus
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = _load_yaml(ROOT / "compose.yml")
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def _env(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return dict(env)


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path (relative to the repository root) of bind mounts."""
    out = {}
    for vol in service.get("volumes", []):
        src, dst = vol.split(":")[:2]
        if src.startswith("."):
            out[dst] = ROOT / src
    return out


def _public_port(service: dict[str, Any]) -> int:
    return _port_of_listen(_env(service).get("GATEWAY_LISTEN") or "0.0.0.0:8080")


def _admin_port(service: dict[str, Any]) -> int:
    return _port_of_listen(_env(service).get("GATEWAY_ADMIN_LISTEN") or "0.0.0.0:9090")


def _traefik_dynamic(services: dict[str, Any]) -> dict[str, Any]:
    traefik = services["traefik"]
    mounts = _mounts(traefik)
    static = _load_yaml(mounts["/etc/traefik/traefik.yml"])
    dynamic_path = static["providers"]["file"]["filename"]
    assert dynamic_path in mounts, "Traefik's file provider must read a mounted file"
    return _load_yaml(mounts[dynamic_path])


def test_compose_is_spec_format_with_expected_services(compose: dict[str, Any]) -> None:
    assert "version" not in compose
    assert {"traefik", "gateway", "gateway-sidecar", "whoami", "api", "redis", "prometheus"} <= set(
        compose["services"]
    )


def test_only_loopback_ports_are_published(services: dict[str, Any]) -> None:
    published = [(name, p) for name, svc in services.items() for p in svc.get("ports", [])]
    assert any(name == "traefik" and p.endswith(":80") for name, p in published)
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert "ports" not in services["gateway"]
    assert "ports" not in services["gateway-sidecar"]


def test_forward_auth_middleware_points_at_gateway_public_port(services: dict[str, Any]) -> None:
    dynamic = _traefik_dynamic(services)
    middlewares = dynamic["http"]["middlewares"]
    forward_auths = [m["forwardAuth"] for m in middlewares.values() if "forwardAuth" in m]
    assert len(forward_auths) == 1
    fa = forward_auths[0]
    url = urlsplit(fa["address"])
    assert url.hostname == "gateway"
    assert url.port == _public_port(services["gateway"]) == 8080
    assert fa["trustForwardHeader"] is True
    assert "X-User-Id" in fa["authResponseHeaders"]
    assert "X-Org-Id" in fa["authResponseHeaders"]
    assert set(IDENTITY_HEADERS) <= set(fa["authResponseHeaders"])
    # The forward-auth gateway must not be in proxy mode.
    assert "GATEWAY_UPSTREAM" not in _env(services["gateway"])


def test_traefik_does_not_trust_client_forwarded_headers(services: dict[str, Any]) -> None:
    static = _load_yaml(_mounts(services["traefik"])["/etc/traefik/traefik.yml"])
    for entry_point in static["entryPoints"].values():
        forwarded = entry_point.get("forwardedHeaders") or {}
        assert not forwarded.get("insecure", False)
        assert "0.0.0.0/0" not in forwarded.get("trustedIPs", [])


def test_traefik_routes_whoami_through_the_middleware(services: dict[str, Any]) -> None:
    http = _traefik_dynamic(services)["http"]
    (middleware,) = [n for n, m in http["middlewares"].items() if "forwardAuth" in m]
    whoami_routers = [r for r in http["routers"].values() if r["service"] == "whoami"]
    assert whoami_routers
    assert all(middleware in r.get("middlewares", []) for r in whoami_routers)
    for svc in http["services"].values():
        for server in svc["loadBalancer"]["servers"]:
            assert urlsplit(server["url"]).hostname in services


def test_sidecar_gateway_proxies_to_api(services: dict[str, Any]) -> None:
    sidecar = services["gateway-sidecar"]
    upstream = urlsplit(_env(sidecar)["GATEWAY_UPSTREAM"])
    assert upstream.hostname == "api"
    api_ports = {int(p) for p in services["api"].get("expose", [])}
    assert upstream.port in api_ports
    # Same image as the forward-auth gateway.
    assert sidecar["image"] == services["gateway"]["image"]


def test_gateways_share_redis_and_wait_for_it(services: dict[str, Any]) -> None:
    assert "healthcheck" in services["redis"]
    for name in ("gateway", "gateway-sidecar"):
        svc = services[name]
        url = urlsplit(_env(svc)["GATEWAY_REDIS_URL"])
        assert url.scheme == "redis"
        assert url.hostname == "redis"
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"


def test_gateways_require_publishable_key_and_check_health(services: dict[str, Any]) -> None:
    for name in ("gateway", "gateway-sidecar"):
        svc = services[name]
        env = _env(svc)
        assert env["CLERK_PUBLISHABLE_KEY"].startswith("${CLERK_PUBLISHABLE_KEY:?")
        assert env["GATEWAY_ADMIN_LISTEN"] == "0.0.0.0:9090"
        check = " ".join(svc["healthcheck"]["test"])
        assert "127.0.0.1:9090/healthz" in check
    traefik_deps = services["traefik"]["depends_on"]
    assert traefik_deps["gateway"]["condition"] == "service_healthy"


def test_prometheus_scrapes_both_gateways_admin_port(services: dict[str, Any]) -> None:
    prom = services["prometheus"]
    mounts = _mounts(prom)
    config = _load_yaml(mounts["/etc/prometheus/prometheus.yml"])
    targets: dict[str, str] = {}
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                targets[target] = job.get("metrics_path", "/metrics")
    for name in ("gateway", "gateway-sidecar"):
        target = f"{name}:{_admin_port(services[name])}"
        assert target == f"{name}:9090"
        assert targets.get(target) == "/metrics"
    # The rule file is mounted where prometheus.yml says (relative to the config file).
    for rule_file in config["rule_files"]:
        in_container = str(Path("/etc/prometheus") / rule_file)
        assert in_container in mounts
        assert mounts[in_container] == CONFIG / "prometheus" / "alerts.yml"


# --------------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    out = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def _final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    return instructions[last_from:]


def test_dockerfile_is_multistage_on_slim_python() -> None:
    instructions = _dockerfile_instructions()
    args = {}
    for keyword, rest in instructions:
        if keyword == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value
    froms = [rest for k, rest in instructions if k == "FROM"]
    assert len(froms) >= 2
    for spec in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], spec.split()[0])
        assert re.fullmatch(r"python:3\.1[1-9]-slim", image), image
    final = _final_stage(instructions)
    # The runtime stage gets only build products from earlier stages, never the source tree.
    for keyword, rest in final:
        if keyword == "COPY":
            assert rest.startswith("--from="), rest


def test_dockerfile_runs_as_fixed_non_root_user() -> None:
    users = [rest for k, rest in _final_stage(_dockerfile_instructions()) if k == "USER"]
    assert users
    user = users[-1].split(":")[0]
    assert user.isdigit(), "use a numeric uid so runAsNonRoot can verify it"
    assert int(user) >= 1000


def test_dockerfile_listeners_healthcheck_and_entrypoint() -> None:
    final = _final_stage(_dockerfile_instructions())
    exposed = {p for k, rest in final if k == "EXPOSE" for p in rest.split()}
    assert {"8080", "9090"} <= exposed
    env = " ".join(rest for k, rest in final if k == "ENV")
    assert "GATEWAY_ADMIN_LISTEN=0.0.0.0:9090" in env
    (healthcheck,) = [rest for k, rest in final if k == "HEALTHCHECK"]
    assert "CMD" in healthcheck
    assert "http://127.0.0.1:9090/healthz" in healthcheck
    assert "curl" not in healthcheck and "wget" not in healthcheck
    (entrypoint,) = [rest for k, rest in final if k == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["clerk-gateway"]
    (cmd,) = [rest for k, rest in final if k == "CMD"]
    assert json.loads(cmd) == ["serve"]


def test_dockerignore_keeps_secrets_out_and_sources_in() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ".env" in patterns
    assert any(p.endswith(".git") for p in patterns)
    for needed in ("pyproject.toml", "gateway", "gateway/", "README.md"):
        assert needed not in patterns


# --------------------------------------------------------------------------------------------
# Kubernetes
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict[str, list[dict[str, Any]]]:
    with (CONFIG / "kubernetes" / "gateway-sidecar.yaml").open(encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def _pod_spec(k8s: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    (deployment,) = k8s["Deployment"]
    return deployment["spec"]["template"]["spec"]


def _gateway_container(k8s: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    (container,) = [c for c in _pod_spec(k8s)["containers"] if "clerk-gateway" in c["image"]]
    return container


def _resolve_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def test_k8s_sidecar_proxies_to_app_on_loopback(k8s: dict[str, list[dict[str, Any]]]) -> None:
    containers = _pod_spec(k8s)["containers"]
    assert len(containers) == 2
    gateway = _gateway_container(k8s)
    (app,) = [c for c in containers if c is not gateway]
    env = {e["name"]: e for e in gateway["env"]}
    upstream = urlsplit(env["GATEWAY_UPSTREAM"]["value"])
    assert upstream.hostname == "127.0.0.1"
    assert upstream.port in {p["containerPort"] for p in app["ports"]}
    assert env["GATEWAY_ADMIN_LISTEN"]["value"] == "0.0.0.0:9090"


def test_k8s_probes_use_admin_listener(k8s: dict[str, list[dict[str, Any]]]) -> None:
    gateway = _gateway_container(k8s)
    live = gateway["livenessProbe"]["httpGet"]
    ready = gateway["readinessProbe"]["httpGet"]
    assert live["path"] == "/healthz"
    assert ready["path"] == "/readyz"
    assert _resolve_port(gateway, live["port"]) == 9090
    assert _resolve_port(gateway, ready["port"]) == 9090


def test_k8s_service_targets_gateway_not_app(k8s: dict[str, list[dict[str, Any]]]) -> None:
    gateway = _gateway_container(k8s)
    (service,) = k8s["Service"]
    (deployment,) = k8s["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    for port in service["spec"]["ports"]:
        assert _resolve_port(gateway, port["targetPort"]) == 8080


def test_k8s_scrape_annotations_and_no_service_monitor(
    k8s: dict[str, list[dict[str, Any]]],
) -> None:
    assert "ServiceMonitor" not in k8s
    (deployment,) = k8s["Deployment"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9090"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_k8s_secrets_come_from_a_secret(k8s: dict[str, list[dict[str, Any]]]) -> None:
    secret_names = {s["metadata"]["name"] for s in k8s["Secret"]}
    env = {e["name"]: e for e in _gateway_container(k8s)["env"]}
    for name in ("CLERK_PUBLISHABLE_KEY", "CLERK_SECRET_KEY", "GATEWAY_ADMIN_TOKEN"):
        assert "value" not in env[name]
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] in secret_names
    for config_map in k8s.get("ConfigMap", []):
        for key in config_map.get("data", {}):
            assert not re.search(r"SECRET|TOKEN|KEY", key), f"{key} belongs in the Secret"


def test_k8s_gateway_runs_locked_down(k8s: dict[str, list[dict[str, Any]]]) -> None:
    assert _pod_spec(k8s)["securityContext"]["runAsNonRoot"] is True
    ctx = _gateway_container(k8s)["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["runAsUser"] != 0


# --------------------------------------------------------------------------------------------
# Grafana dashboard and metric names
# --------------------------------------------------------------------------------------------


def test_promql_metric_name_extraction() -> None:
    expr = (
        'sum by (le, route) (rate(clerk_gateway_x_total{a="b", c=~"$inst"}[$__rate_interval]))'
        " / on (job) group_left (version) up offset 1h30m > bool 0.5"
        ' and time() - clerk_gateway_keys{x="{y}"} > 3600'
    )
    assert promql_metric_names(expr) == {"clerk_gateway_x_total", "up", "clerk_gateway_keys"}


def _dashboard_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(_dashboard_panels(panel.get("panels", [])))
    return out


def _dashboard() -> dict[str, Any]:
    with (CONFIG / "grafana" / "dashboard.json").open(encoding="utf-8") as f:
        return json.load(f)


def test_dashboard_exprs_use_known_metrics() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"]
    exprs = [
        t["expr"]
        for p in _dashboard_panels(dashboard["panels"])
        if p.get("type") != "row"
        for t in p.get("targets", [])
    ]
    assert len(exprs) >= 15
    for expr in exprs:
        names = promql_metric_names(expr)
        assert names, expr
        assert names <= KNOWN_SERIES, f"unknown metric(s) {names - KNOWN_SERIES} in {expr}"
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query or "")
        if match:
            assert promql_metric_names(match.group(1)) <= KNOWN_SERIES


def test_dashboard_covers_every_metric_family() -> None:
    used: set[str] = set()
    for panel in _dashboard_panels(_dashboard()["panels"]):
        for target in panel.get("targets", []):
            used |= promql_metric_names(target["expr"])
    for family in (*_COUNTERS, *_GAUGES):
        assert f"clerk_gateway_{family}" in used, family
    for histogram in _HISTOGRAMS:
        assert f"clerk_gateway_{histogram}_bucket" in used, histogram


def test_dashboard_panels_are_well_formed() -> None:
    panels = [p for p in _dashboard_panels(_dashboard()["panels"]) if p.get("type") != "row"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["type"] in {"timeseries", "stat", "gauge", "table", "bargauge"}
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"]
        for target in panel["targets"]:
            assert target["refId"]


def test_alert_exprs_use_known_metrics() -> None:
    rules = _load_yaml(CONFIG / "prometheus" / "alerts.yml")
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert exprs
    for expr in exprs:
        names = promql_metric_names(expr)
        assert names, expr
        assert names <= KNOWN_SERIES, f"unknown metric(s) {names - KNOWN_SERIES} in {expr}"


# --------------------------------------------------------------------------------------------
# nginx, Caddy, Envoy examples
# --------------------------------------------------------------------------------------------


def test_nginx_auth_request_wiring() -> None:
    conf = (CONFIG / "nginx" / "clerk-gateway.conf").read_text(encoding="utf-8")
    (auth_block,) = re.findall(r"location = /_clerk_gateway_auth \{(.*?)\n    \}", conf, re.S)
    assert "internal;" in auth_block
    assert "proxy_pass_request_body off;" in auth_block
    assert re.search(r"proxy_set_header X-Original-URI \$request_uri;", auth_block)
    assert re.search(r"proxy_set_header X-Original-Method \$request_method;", auth_block)
    assert "auth_request /_clerk_gateway_auth;" in conf
    for header in IDENTITY_HEADERS:
        var = "$upstream_http_" + header.lower().replace("-", "_")
        match = re.search(r"auth_request_set \$(\w+)\s+" + re.escape(var) + ";", conf)
        assert match, header
        # Always overwritten, so the client's own copy never reaches the app.
        assert f"proxy_set_header {header} ${match.group(1)};" in conf


def test_nginx_config_is_accepted_by_nginx(tmp_path: Path) -> None:
    nginx = shutil.which("nginx", path="/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin")
    if nginx is None:
        pytest.skip("nginx not installed")
    temp_dirs = " ".join(
        f"{kind}_temp_path {tmp_path / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = tmp_path / "nginx.conf"
    site = CONFIG / "nginx" / "clerk-gateway.conf"
    main.write_text(
        f"pid {tmp_path / 'nginx.pid'};\nerror_log stderr;\nevents {{}}\n"
        f"http {{ access_log off; {temp_dirs} include {site}; }}\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(main), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_caddyfile_forward_auth_wiring() -> None:
    text = (CONFIG / "caddy" / "Caddyfile").read_text(encoding="utf-8")
    assert re.search(r"forward_auth \S+:8080 \{", text)
    (copy_line,) = re.findall(r"^\s*copy_headers (.+)$", text, re.M)
    assert set(IDENTITY_HEADERS) <= set(copy_line.split())
    assert "2.6.2" in text and "{http.reverse_proxy.header.X-Org-Id}" in text
    for header in IDENTITY_HEADERS:
        assert re.search(rf"header_regexp {header} \^", text), header


def test_caddyfile_is_accepted_by_caddy(tmp_path: Path) -> None:
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.skip("caddy not installed")
    result = subprocess.run(
        [caddy, "adapt", "--config", str(CONFIG / "caddy" / "Caddyfile"), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    adapted = json.loads(result.stdout)
    assert "reverse_proxy" in json.dumps(adapted)


def _find_filters(node: Any, name: str) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        if node.get("name") == name:
            found.append(node)
        for value in node.values():
            found.extend(_find_filters(value, name))
    elif isinstance(node, list):
        for item in node:
            found.extend(_find_filters(item, name))
    return found


def test_envoy_ext_authz_wiring() -> None:
    config = _load_yaml(CONFIG / "envoy" / "envoy.yaml")
    (hcm,) = _find_filters(config, "envoy.filters.network.http_connection_manager")
    filters = [f["name"] for f in hcm["typed_config"]["http_filters"]]
    assert filters[-1] == "envoy.filters.http.router"
    assert filters.index("envoy.filters.http.header_mutation") < filters.index(
        "envoy.filters.http.ext_authz"
    )
    (ext_authz,) = _find_filters(config, "envoy.filters.http.ext_authz")
    typed = ext_authz["typed_config"]
    assert typed["failure_mode_allow"] is False
    service = typed["http_service"]
    assert service["path_prefix"].startswith("/") and len(service["path_prefix"]) > 1
    cluster = service["server_uri"]["cluster"]
    assert cluster in {c["name"] for c in config["static_resources"]["clusters"]}
    allowed = {p["exact"] for p in service["authorization_request"]["allowed_headers"]["patterns"]}
    assert "cookie" in allowed
    upstream = {
        p["exact"]
        for p in service["authorization_response"]["allowed_upstream_headers"]["patterns"]
    }
    assert {h.lower() for h in IDENTITY_HEADERS} <= upstream
    (mutation,) = _find_filters(config, "envoy.filters.http.header_mutation")
    removed = {m["remove"] for m in mutation["typed_config"]["mutations"]["request_mutations"]}
    assert {h.lower() for h in IDENTITY_HEADERS if h != "X-Request-Id"} <= removed
    # Underscore spellings (X_User_Id) are refused, never passed to the app.
    options = hcm["typed_config"]["common_http_protocol_options"]
    assert options["headers_with_underscores_action"] == "REJECT_REQUEST"
    # The gateway's refusals reach the client whole: JSON, challenge, Retry-After.
    client = {p["exact"] for p in service["authorization_response"]["allowed_client_headers"][
        "patterns"]}
    assert {"www-authenticate", "content-type", "retry-after"} <= client


def test_traefik_strips_every_underscore_spelling_before_forward_auth() -> None:
    http = _load_yaml(CONFIG / "traefik" / "dynamic.yml")["http"]
    deleted = http["middlewares"]["strip-spoofed-identity"]["headers"]["customRequestHeaders"]
    for header in IDENTITY_HEADERS:
        for spelling in spellings(header)[1:]:  # the first is the dashed name
            assert deleted.get(spelling) == "", spelling
    for router in http["routers"].values():
        middlewares = router.get("middlewares", [])
        if "clerk-auth" in middlewares:
            assert middlewares.index("strip-spoofed-identity") < middlewares.index("clerk-auth")


# --------------------------------------------------------------------------------------------
# The state directory (shared SQLite store) on a volume everywhere
# --------------------------------------------------------------------------------------------

STATE_DIR = "/var/lib/clerk-gateway"


def test_dockerfile_keeps_state_on_a_volume_owned_by_the_gateway_user() -> None:
    final = _final_stage(_dockerfile_instructions())
    env = " ".join(rest for k, rest in final if k == "ENV")
    assert f"GATEWAY_STATE_DIR={STATE_DIR}" in env
    volumes = [v for k, rest in final if k == "VOLUME" for v in json.loads(rest)]
    assert volumes == [STATE_DIR]
    runs = " ".join(rest for k, rest in final if k == "RUN")
    assert re.search(rf"install -d -m 0700 -o 10001 -g 10001 {STATE_DIR}\b", runs)


def test_compose_gives_each_gateway_its_own_state_volume(compose: dict[str, Any]) -> None:
    services = compose["services"]
    mounted = {}
    for name in ("gateway", "gateway-sidecar"):
        service = services[name]
        assert service.get("read_only") is True  # so the volume is the only writable state
        mounts = [v for v in service.get("volumes", []) if v.endswith(f":{STATE_DIR}")]
        assert len(mounts) == 1, service.get("volumes")
        volume = mounts[0].split(":")[0]
        assert volume in compose["volumes"], f"{volume} is not a declared named volume"
        mounted[name] = volume
    assert len(set(mounted.values())) == 2


def test_k8s_gateway_mounts_its_state_dir_writable(k8s: dict[str, list[dict[str, Any]]]) -> None:
    container = _gateway_container(k8s)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GATEWAY_STATE_DIR"] == STATE_DIR
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount = mounts[STATE_DIR]
    assert not mount.get("readOnly", False)
    volumes = {v["name"]: v for v in _pod_spec(k8s)["volumes"]}
    assert "emptyDir" in volumes[mount["name"]]
    assert volumes[mount["name"]]["emptyDir"].get("medium") != "Memory"  # counted as RAM
    assert _pod_spec(k8s)["securityContext"]["fsGroup"] == container["securityContext"][
        "runAsGroup"]
