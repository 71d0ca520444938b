"""Configuration: environment first, YAML for the rest, every problem reported at once."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.config import ConfigError, issuer_from_publishable_key, load_settings


def pk(host: str, prefix: str = "pk_test_") -> str:
    return prefix + base64.b64encode(f"{host}$".encode()).decode().rstrip("=")


def test_issuer_from_publishable_key() -> None:
    assert issuer_from_publishable_key(pk("foo-bar-13.clerk.accounts.dev")) == (
        "https://foo-bar-13.clerk.accounts.dev")
    assert issuer_from_publishable_key(pk("clerk.example.com", "pk_live_")) == (
        "https://clerk.example.com")


@pytest.mark.parametrize("key", ["sk_test_abc", "pk_test_!!!", pk("no-dollar")[:-2] + "xx",
                                 "pk_live_" + base64.b64encode(b"a/b$").decode()])
def test_bad_publishable_keys(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"CLERK_PUBLISHABLE_KEY": key})
    assert "CLERK_PUBLISHABLE_KEY" in str(info.value)


def test_environment_only_configuration() -> None:
    settings = load_settings({
        "CLERK_PUBLISHABLE_KEY": pk("clerk.example.com", "pk_live_"),
        "CLERK_AUTHORIZED_PARTIES": "https://app.example.com, https://admin.example.com",
        "GATEWAY_LISTEN": "127.0.0.1:8000",
    })
    (issuer,) = settings.issuers
    assert issuer.issuer == "https://clerk.example.com"
    assert issuer.key_source == "jwks"
    assert issuer.authorized_parties == ("https://app.example.com", "https://admin.example.com")
    assert str(settings.listen) == "127.0.0.1:8000"
    assert str(settings.admin_listen) == "127.0.0.1:9090"
    assert settings.mode == "forward_auth"


def test_secret_key_selects_the_backend_api() -> None:
    settings = load_settings({"CLERK_ISSUER": "https://clerk.example.com",
                              "CLERK_SECRET_KEY": "sk_live_x"})
    assert settings.issuers[0].key_source == "backend_api"
    assert settings.issuers[0].backend_api_url == "https://api.clerk.com"


def test_explicit_jwks_url_wins_over_the_secret_key() -> None:
    settings = load_settings({"CLERK_ISSUER": "https://clerk.example.com",
                              "CLERK_SECRET_KEY": "sk_live_x",
                              "CLERK_JWKS_URL": "https://clerk.example.com/keys"})
    assert settings.issuers[0].key_source == "jwks"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({
        "listen": "0.0.0.0:7000",
        "issuers": [{"name": "clerk", "issuer": "https://old.example.com",
                     "audiences": ["api"]}],
    }))
    settings = load_settings({"CLERK_ISSUER": "https://new.example.com",
                              "GATEWAY_LISTEN": "127.0.0.1:7001"}, str(path))
    assert str(settings.listen) == "127.0.0.1:7001"
    assert settings.issuers[0].issuer == "https://new.example.com"
    assert settings.issuers[0].audiences == ("api",)  # the file's other settings remain


def test_several_issuers_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"issuers": [
        {"name": "dev", "issuer": "https://dev-1.clerk.accounts.dev"},
        {"name": "prod", "issuer": "https://clerk.example.com", "algorithms": ["RS256", "RS512"]},
        {"name": "okta", "issuer": "https://example.okta.com", "preset": "oidc",
         "claims": {"org_id": "/https:~1~1hasura.io~1jwt~1claims/x-hasura-org-id"}},
    ]}))
    settings = load_settings({}, str(path))
    assert [i.name for i in settings.issuers] == ["dev", "prod", "okta"]
    assert settings.issuers[2].key_source == "discovery"
    assert settings.issuers[2].claims.org_id == "/https:~1~1hasura.io~1jwt~1claims/x-hasura-org-id"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({
        "listen": "nonsense",
        "colour": "blue",
        "verification": {"leeway_seconds": -1, "max_token_bytes": "big"},
        "issuers": [
            {"name": "a", "issuer": "http://clerk.example.com"},
            {"name": "b", "issuer": "https://b.example.com", "algorithms": ["HS256", "none"]},
            {"name": "c", "issuer": "https://c.example.com", "jwks_url": "https://c/x",
             "discovery": True},
            {"issuer": "https://d.example.com", "preset": "saml"},
        ],
        "identity_headers": {"user_id": "X User", "org_id": "X-User-Id"},
    }))
    with pytest.raises(ConfigError) as info:
        load_settings({"GATEWAY_LOG_FORMAT": "xml"}, str(path))
    text = str(info.value)
    assert text.startswith("invalid configuration:\n")
    for expected in [
        "listen: 'nonsense' must be host:port",
        "colour: unknown setting",
        "verification.leeway_seconds: must be at least 0",
        "verification.max_token_bytes: must be a number",
        "issuers[0].issuer: 'http://clerk.example.com' must be an https URL",
        "issuers[1].algorithms: 'HS256' is not allowed",
        "issuers[1].algorithms: 'none' is not allowed",
        "issuers[2]: choose one key source, got jwks_url, discovery",
        "issuers[3].name: is required",
        "issuers[3].preset: must be one of clerk, oidc",
        "identity_headers.user_id: 'X User' is not a valid header name",
        "log format: 'xml' must be json or text",
    ]:
        assert expected in text, expected
    assert len(info.value.problems) >= 12


def test_loopback_http_is_allowed_for_key_urls() -> None:
    settings = load_settings({"CLERK_ISSUER": "http://127.0.0.1:4000",
                              "CLERK_JWKS_URL": "http://localhost:4000/jwks"})
    assert settings.issuers[0].jwks_url == "http://localhost:4000/jwks"


def test_plain_http_key_url_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"CLERK_ISSUER": "https://clerk.example.com",
                       "CLERK_JWKS_URL": "http://clerk.example.com/jwks"})
    assert "must be an https URL" in str(info.value)


def test_no_issuer_is_a_problem() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({})
    assert "no issuer configured" in str(info.value)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"CLERK_ISSUER": "https://x.example"}, str(tmp_path / "missing.yaml"))
    assert "cannot be read" in str(info.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("issuers: [\n  - name: x\n")
    with pytest.raises(ConfigError) as info:
        load_settings({"CLERK_ISSUER": "https://x.example"}, str(bad))
    assert "not valid YAML" in str(info.value)


def test_secrets_are_never_shown() -> None:
    settings = load_settings({"CLERK_ISSUER": "https://x.example",
                              "CLERK_SECRET_KEY": "sk_live_TOPSECRET",
                              "GATEWAY_ADMIN_TOKEN": "admintoken-TOPSECRET"})
    assert "TOPSECRET" not in repr(settings)


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], env={"PATH": "/usr/bin",
                          **env}, capture_output=True, text=True, timeout=60)


def test_check_config_reports_problems_and_hides_secrets() -> None:
    result = run_cli("check-config", env={
        "CLERK_SECRET_KEY": "sk_live_TOPSECRET", "CLERK_PUBLISHABLE_KEY": "pk_test_%%%",
        "GATEWAY_ADMIN_TOKEN": "TOPSECRET2", "GATEWAY_LISTEN": "x"})
    assert result.returncode == 2
    assert result.stderr.startswith("invalid configuration:")
    assert "CLERK_PUBLISHABLE_KEY" in result.stderr and "listen" in result.stderr
    assert "TOPSECRET" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_describes_a_valid_configuration() -> None:
    result = run_cli("check-config", env={"CLERK_PUBLISHABLE_KEY": pk("clerk.example.com"),
                                          "CLERK_SECRET_KEY": "sk_live_TOPSECRET"})
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    assert "https://clerk.example.com" in result.stdout
    assert "TOPSECRET" not in result.stdout


def test_serve_refuses_to_start_on_invalid_configuration() -> None:
    result = run_cli("serve", env={"GATEWAY_LISTEN": "127.0.0.1:1"})
    assert result.returncode == 2
    assert "invalid configuration" in result.stderr and "no issuer configured" in result.stderr


def test_the_example_configuration_is_valid() -> None:
    example = Path(__file__).parents[1] / "config" / "gateway.example.yaml"
    settings = load_settings({}, str(example))
    assert settings.mode == "proxy"
    assert [r.name for r in settings.routes] == [
        "health", "docs", "org-invoices", "user-settings", "reports", "admin"]
    assert settings.issuers[0].authorized_parties == ("https://app.example.com",)
    assert settings.proxy.strip_header_prefixes == ("X-Auth-",)


@pytest.mark.parametrize(("name", "value"), [
    ("GATEWAY_WORKERS", "-1"), ("GATEWAY_WORKERS", "2.5"), ("GATEWAY_WORKERS", "many"),
    ("GATEWAY_WORKERS", "257"), ("GATEWAY_SHUTDOWN_TIMEOUT", "soon"),
    ("GATEWAY_SHUTDOWN_TIMEOUT", "-1"), ("GATEWAY_SHUTDOWN_TIMEOUT", "4000"),
])
def test_bad_numbers_in_the_environment(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"CLERK_ISSUER": "https://x.example", name: value})
    assert f"{name}: {value!r} must be" in str(info.value)


def test_numbers_in_the_environment_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("workers: 4\nshutdown_timeout_seconds: 10\n")
    settings = load_settings({"CLERK_ISSUER": "https://x.example", "GATEWAY_WORKERS": "2",
                              "GATEWAY_SHUTDOWN_TIMEOUT": "2.5"}, str(path))
    assert settings.workers == 2 and settings.shutdown_timeout_seconds == 2.5
    assert load_settings({"CLERK_ISSUER": "https://x.example"}, str(path)).workers == 4
