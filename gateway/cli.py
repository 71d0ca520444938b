"""Command line: `clerk-gateway serve | check-config | demo`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.config import ConfigError, Settings, load_settings
from gateway.logs import setup_logging
from gateway.loops import loop_problem, run

__all__ = ["main"]


def _load(args: argparse.Namespace) -> Settings | None:
    try:
        return load_settings(os.environ, args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


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
    default = settings.route_options.default.rule.access
    lines.append(f"  routes: {len(settings.routes)} (unmatched requests: {default})")
    for route in settings.routes:
        lines.append(f"    {route.name}: {route.rule.access}")
    return "\n".join(lines)


def _check_config(args: argparse.Namespace) -> int:
    settings = _load(args)
    if settings is None:
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
    index = worker_index()
    count = 1 if index is not None else worker_count(args.workers, settings.workers)
    if count > 1:
        config = args.config or os.environ.get("GATEWAY_CONFIG")
        return run_workers(count, config, settings.shutdown_timeout_seconds)
    from gateway.app import Gateway
    from gateway.server import serve
    from gateway.workers import multiprocess_registry

    if index is None:
        run(serve(settings), settings.event_loop)
    else:
        scrape = multiprocess_registry()
        gateway = Gateway(settings, scrape_registry=scrape)
        run(serve(settings, gateway=gateway, reuse_port=True,
                  reload_missed=lambda: reload_generation() != generation), settings.event_loop)
    return 0


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `clerk-gateway` command."""
    args = _parser().parse_args(argv)
    handlers = {"serve": _serve, "check-config": _check_config, "demo": _demo}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        return 130
