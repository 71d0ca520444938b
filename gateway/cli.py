"""Command line: `clerk-gateway serve | check-config | demo`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__
from gateway.config import ConfigError, Settings, load_settings
from gateway.devtokens import StateError
from gateway.devtokens import add_commands as add_dev_commands
from gateway.logs import protect_secrets, setup_logging
from gateway.loops import loop_problem, run
from gateway.redaction import secret_values
from gateway.startup import ListenError, check_listeners, issuer_warnings

__all__ = ["main"]


def _load(args: argparse.Namespace, *, create_state: bool = True) -> Settings | None:
    from gateway.state.schema import check_state_dir

    def check(path: str) -> list[str]:
        return check_state_dir(Path(path), create=create_state)

    try:
        return load_settings(os.environ, args.config, check)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def _signing_key_problem(settings: Settings) -> str | None:
    """Why the configured signing key cannot be used (None when it can, or is not needed)."""
    from gateway.auth.signing_keys import SigningKeyError, load_signing_key

    config = settings.assertion
    if not config.enabled:
        return None
    try:
        load_signing_key(config.key_file, settings.state_dir, config.algorithm)
    except SigningKeyError as exc:
        return f"assertion: {exc}"
    return None


def _describe_assertion(settings: Settings) -> str:
    """One line: whether assertions are signed, with which key id, from where."""
    from gateway.auth.signing_keys import (
        SigningKeyError,
        generated_key_path,
        load_signing_key,
        planned_key_source,
    )

    config = settings.assertion
    if not config.enabled:
        return "  assertion: off"
    source = planned_key_source(config.key_file, settings.state_dir, config.algorithm)
    kid = "(generated at first start)"
    if config.key_file or generated_key_path(settings.state_dir, config.algorithm).exists():
        try:
            kid = load_signing_key(config.key_file, settings.state_dir, config.algorithm).kid
        except SigningKeyError as exc:
            kid = f"(unusable: {exc})"
    return (f"  assertion: {config.header}, {config.algorithm}, key id {kid}, "
            f"key {source}, published at /_gateway/jwks.json")


def _describe(settings: Settings) -> str:
    lines = [
        "configuration OK",
        f"  mode: {settings.mode}" + (f" -> {settings.upstream}" if settings.upstream else ""),
        f"  listen: {settings.listen}   admin: {settings.admin_listen}",
    ]
    for issuer in settings.issuers:
        lines.append(
            f"  issuer {issuer.name}: {issuer.issuer} (preset {issuer.preset}, "
            f"keys from {issuer.key_source}, algorithms {', '.join(issuer.algorithms)})"
        )
    lines.append(f"  token types: {', '.join(sorted(settings.token_types))}" + "".join(
        f"; {r.name} accepts {', '.join(sorted(r.rule.accepts))}"
        for r in settings.routes if r.rule.accepts is not None))
    default = settings.route_options.default.rule.access
    shared = "shared by every worker" if settings.shared_state else "per process (not shared)"
    lines.append(f"  state: {settings.state_dir} ({shared})")
    lines.append(f"  routes: {len(settings.routes)} (unmatched requests: {default})")
    for route in settings.routes:
        lines.append(f"    {route.name}: {route.rule.access}")
    lines.append(_describe_assertion(settings))
    lines.extend(f"warning: {warning}" for warning in issuer_warnings(settings))
    return "\n".join(lines)


def _check_config(args: argparse.Namespace) -> int:
    settings = _load(args, create_state=False)
    if settings is None:
        return 2
    if settings.assertion.key_file and (problem := _signing_key_problem(settings)):
        print(f"invalid configuration:\n  - {problem}", file=sys.stderr)
        return 2
    print(_describe(settings))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from gateway.workers import reload_generation, run_workers, worker_count, worker_index

    generation = reload_generation()  # before loading: a reload after this is not missed
    settings = _load(args)
    if settings is None:
        return 2
    setup_logging(settings.log_level, settings.log_format)
    problem = _signing_key_problem(settings)  # the parent creates a generated key once
    if problem is not None:
        print(f"invalid configuration:\n  - {problem}", file=sys.stderr)
        return 2
    protect_secrets(secret_values(settings))
    index = worker_index()
    count = 1 if index is not None else worker_count(args.workers, settings.workers)
    if index is None:
        check_listeners(settings)  # one clear line now, before keys are fetched or workers run
    if count > 1:
        config = args.config or os.environ.get("GATEWAY_CONFIG")
        return run_workers(count, config, settings.shutdown_timeout_seconds)
    from gateway.app import Gateway
    from gateway.server import serve
    from gateway.workers import multiprocess_registry

    if index is None:
        run(serve(settings, report_workers=1, on_ready=_settle_heap), settings.event_loop)
    else:
        scrape = multiprocess_registry()
        gateway = Gateway(settings, scrape_registry=scrape)
        # The first worker tells the start-up facts; the parent set GATEWAY_WORKERS.
        run(serve(settings, gateway=gateway, reuse_port=True,
                  reload_missed=lambda: reload_generation() != generation,
                  report_workers=settings.workers if index == 0 else None,
                  on_ready=_settle_heap), settings.event_loop)
    return 0


async def _settle_heap(_: object) -> None:
    """The worker listens: what start-up made is never scanned by the collector again."""
    from gateway.heap import settle_heap

    frozen = settle_heap()
    logging.getLogger("gateway.start").info(
        "heap settled: %d start-up objects out of the collector's sight", frozen)


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    choice = os.environ.get("GATEWAY_EVENT_LOOP", "auto").strip().lower()
    problem = loop_problem(choice)
    if problem is not None:
        print(ConfigError([f"GATEWAY_EVENT_LOOP: {problem}"]), file=sys.stderr)
        return 2
    return run(run_demo(port=args.port, admin_port=args.admin_port, check=args.check), choice)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clerk-gateway",
        description="Verify Clerk (and OIDC) session tokens in front of existing APIs.",
    )
    parser.add_argument("--version", action="version", version=f"clerk-gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("serve", "run the gateway"),
        ("check-config", "validate the configuration and exit"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--config", help="YAML configuration file (default: $GATEWAY_CONFIG)")
        if name == "serve":
            sub.add_argument(
                "--workers", type=int, default=None,
                help="worker processes sharing the port (default: $GATEWAY_WORKERS, else one "
                     "per CPU)")
    demo = commands.add_parser("demo", help="run a local issuer, an echo upstream and the gateway")
    demo.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
    demo.add_argument("--admin-port", type=int, default=9090, help="admin port (default 9090)")
    demo.add_argument("--check", action="store_true",
                      help="send one allowed and one refused request through the demo, then exit")
    add_dev_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `clerk-gateway` command."""
    args = _parser().parse_args(argv)
    handlers = {"serve": _serve, "check-config": _check_config, "demo": _demo}
    try:
        handler = handlers.get(args.command) or args.handler
        return int(handler(args))
    except (StateError, ListenError) as exc:
        print(f"clerk-gateway {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
