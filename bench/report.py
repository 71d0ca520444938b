"""Turn the harness's raw results into targets, results.json and results.md."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from bench import missed
from bench.medians import median_cpu, median_of, median_rps

__all__ = ["evaluate", "summary", "write"]

Result = dict[str, Any]


def _cpu_ratio(results: Result, top: str, bottom: str) -> float | None:
    """Throughput ratio implied by server CPU per request (robust to a busy machine)."""
    a, b = median_cpu(results, top), median_cpu(results, bottom)
    return b / a if a and b else None


def _round_ratios(results: Result, top: str, bottom: str) -> list[float]:
    """Ratios of two contenders' runs in the same round (each round alternates them)."""
    c = results.get("contenders", {})
    if not (c.get(top, {}).get("runs") and c.get(bottom, {}).get("runs")):
        return []
    return [a["rps"] / b["rps"] for a, b in zip(c[top]["runs"], c[bottom]["runs"], strict=False)
            if b["rps"]]


def _ratio(results: Result, top: str, bottom: str) -> float | None:
    a, b = median_rps(results, top), median_rps(results, bottom)
    return a / b if a is not None and b else None


def _target(name: str, value: float | None, goal: str, met: bool | None, detail: str,
            unit: str = "x", limit: tuple[str, float] | None = None,
            pair: tuple[str, str] | None = None, measure: str = "") -> Result:
    """One target; `limit` is the goal as (">=" or "<=", number) where it is one number,
    `pair` the two contenders of the headline pass it compares by `measure` (rps, p99)."""
    return {"name": name, "value": value, "goal": goal, "met": met, "detail": detail,
            "unit": unit, "limit": {"op": limit[0], "value": limit[1]} if limit else None,
            "pair": list(pair) if pair else None, "measure": measure}


# Issue 15's throughput targets: (contender, reference, goal), on the headline loop.
THROUGHPUT_GOALS = (("gateway_fa", "bare", 1.0), ("gateway_fa", "naive", 4.0),
                    ("gateway_proxy", "aiohttp_proxy", 2.0), ("gateway_proxy", "nginx_proxy", 0.33))


def _loop_view(results: Result, loop: str) -> Result:
    """The results as if `loop`'s pass were the only one."""
    return {**results, "contenders": results.get("loop_passes", {}).get(loop, {})}


def evaluate(results: Result) -> list[Result]:
    """Every target of issue 15 with its measured value and whether it is met."""
    targets = []
    headline = results.get("headline_loop", "the default loop")
    for top, bottom, goal in THROUGHPUT_GOALS:
        ratio = _ratio(results, top, bottom)
        per_round = _round_ratios(results, top, bottom)
        detail = ("per round: " + ", ".join(f"{r:.2f}" for r in per_round)) if per_round else (
            "not measured")
        cpu = _cpu_ratio(results, top, bottom)
        if cpu is not None:
            a, b = median_cpu(results, top), median_cpu(results, bottom)
            detail += f"; by server CPU per request: {cpu:.2f}x ({a:.1f} vs {b:.1f} us)"
        if top == "gateway_proxy" and ratio is None:
            note = results.get("contenders", {}).get("gateway_proxy", {}).get("note", "")
            detail = note or detail
        targets.append(_target(f"{top} / {bottom} (req/s, {headline})", ratio, f">= {goal:g}x",
                               None if ratio is None else ratio >= goal, detail,
                               limit=(">=", goal), pair=(top, bottom), measure="rps"))
    ratio = _ratio(results, "gateway_fa", "gateway_fa_api_key")
    if ratio is not None:
        cpu = _cpu_ratio(results, "gateway_fa", "gateway_fa_api_key")
        targets.append(_target(
            "cached API key cost / cached session token cost (gateway_fa / gateway_fa_api_key "
            "req/s)", ratio, "<= 1.1x", ratio <= 1.1,
            "per round: " + ", ".join(
                f"{r:.2f}" for r in _round_ratios(results, "gateway_fa", "gateway_fa_api_key"))
            + (f"; by server CPU per request: {cpu:.2f}x" if cpu else ""),
            limit=("<=", 1.1), pair=("gateway_fa", "gateway_fa_api_key"), measure="rps"))
    p99 = median_of(results, "gateway_proxy", "p99_ms")
    nginx_p99 = median_of(results, "nginx_proxy", "p99_ms")
    p99_ratio = p99 / nginx_p99 if p99 is not None and nginx_p99 else None
    targets.append(_target(
        f"gateway_proxy p99 / nginx_proxy p99 ({headline})", p99_ratio, "<= 2x",
        None if p99_ratio is None else p99_ratio <= 2.0,
        f"{p99:.2f} vs {nginx_p99:.2f} ms" if p99_ratio is not None else "not measured",
        limit=("<=", 2.0), pair=("gateway_proxy", "nginx_proxy"), measure="p99"))
    for loop in results.get("loop_passes", {}):
        if loop == results.get("headline_loop"):
            continue
        view = _loop_view(results, loop)
        for top, bottom, goal in THROUGHPUT_GOALS:
            ratio = _ratio(view, top, bottom)
            targets.append(_target(f"{top} / {bottom} (req/s, {loop}, report)", ratio,
                                   f"report (goal on {headline}: >= {goal:g}x)", None,
                                   "every contender of this pass on " + loop))
    ratio = _ratio(results, "gateway_fa_logged", "bare")
    cpu = _cpu_ratio(results, "gateway_fa_logged", "bare")
    targets.append(_target(
        "gateway_fa_logged / bare (req/s)", ratio, "report", None,
        "forward-auth with one JSON access line per request written to a file" + (
            f"; by server CPU per request: {cpu:.2f}x" if cpu else "")))
    for top, bottom in (("gateway_fa_asserted", "gateway_fa"),
                        ("gateway_proxy_asserted", "gateway_proxy")):
        ratio = _ratio(results, top, bottom)
        per_round = _round_ratios(results, top, bottom)
        targets.append(_target(
            f"{top} / {bottom} (req/s)", ratio, ">= 0.9x", None if ratio is None else ratio >= 0.9,
            "signed assertions on vs off; per round: " + ", ".join(f"{r:.2f}" for r in per_round)
            if per_round else "not measured", limit=(">=", 0.9), pair=(top, bottom),
            measure="rps"))
    for top, bottom, same, what in (
            ("gateway_proxy_varied", "nginx_proxy_varied", ("gateway_proxy", "nginx_proxy"),
             "proxy"),
            ("gateway_fa_varied", "bare", ("gateway_fa", "bare"), "forward-auth")):
        ratio = _ratio(results, top, bottom)
        same_ratio = _ratio(results, *same)
        per_round = _round_ratios(results, top, bottom)
        targets.append(_target(
            f"{what}, a new path every request: {top} / {bottom} (req/s)", ratio, "report",
            None, ("no request head (nor, proxied, upstream answer) comes twice, so the "
                   "doors' memos of heads never help; per round: "
                   + ", ".join(f"{r:.2f}" for r in per_round)
                   + (f"; the same pair with one request repeated: {same_ratio:.2f}x"
                      if same_ratio is not None else "")) if per_round else "not measured",
            pair=(top, bottom), measure="rps"))
    ratio = _ratio(results, "gateway_fa", "gateway_fa_local")
    per_round = _round_ratios(results, "gateway_fa", "gateway_fa_local")
    cpu = _cpu_ratio(results, "gateway_fa", "gateway_fa_local")
    targets.append(_target(
        "shared store on / off: gateway_fa / gateway_fa_local (req/s)", ratio, ">= 0.97x",
        None if ratio is None else ratio >= 0.97,
        ("per round: " + ", ".join(f"{r:.2f}" for r in per_round) if per_round
         else "not measured") + (f"; by server CPU per request: {cpu:.2f}x" if cpu else ""),
        limit=(">=", 0.97), pair=("gateway_fa", "gateway_fa_local"), measure="rps"))
    http = results.get("http_cost")
    if http:
        ratio = 1 / http["gateway_over_bare"]
        targets.append(_target(
            "cross-check, in-process: gateway_fa / bare (1 / CPU per request)", ratio,
            ">= 0.85x", ratio >= 0.85,
            f"{http['gateway_fa_us']['min']:.1f} vs {http['bare_us']['min']:.1f} us CPU per "
            "request, sockets excluded (min of reps)" + (
                f"; the same gateway with the fast door off (`forward_auth.fast_path: false`): "
                f"{http['gateway_fa_aiohttp_door_us']['min']:.1f} us"
                if "gateway_fa_aiohttp_door_us" in http else "") + (
                f"; with the JSON access log at INFO (to /dev/null): "
                f"{http['gateway_fa_access_log_us']['min']:.1f} us"
                if "gateway_fa_access_log_us" in http else ""), limit=(">=", 0.85)))
    targets += _hostile_targets(results)
    if http and "shared_store_over_local" in http:
        ratio = 1 / http["shared_store_over_local"]
        targets.append(_target(
            "cross-check, in-process: shared store on / off (1 / CPU per request)", ratio,
            ">= 0.97x", ratio >= 0.97,
            f"{http['gateway_fa_us']['min']:.1f} vs {http['gateway_fa_local_us']['min']:.1f} "
            "us CPU per request, sockets excluded (min of reps)", limit=(">=", 0.97)))
    verify = results.get("verify")
    if verify:
        ratio = verify["first_seen_over_bare"]["median"]
        targets.append(_target(
            "first-seen token / bare jwt.decode (time)", ratio, "<= 1.2x", ratio <= 1.2,
            f"{verify['gateway_first_seen_us']['median']:.1f} us vs "
            f"{verify['bare_pyjwt_us']['median']:.1f} us; cached "
            f"{verify['gateway_cached_us']['median']:.2f} us", limit=("<=", 1.2)))
    storm = results.get("storm")
    if storm:
        gap = storm.get("min_seconds_between_fetches")
        targets.append(_target(
            "unknown-kid storm: key fetches", storm["key_fetches"],
            f"<= {storm['allowed_fetches']} (one per {storm['cooldown_seconds']:g} s cooldown, "
            f"{storm.get('workers', 1)} workers together)",
            storm["allowed_fetches"] is not None
            and storm["key_fetches"] <= storm["allowed_fetches"]
            and (gap is None or gap >= storm["cooldown_seconds"] * 0.99),
            f"{storm['fetches_per_minute']:.1f}/min vs cooldown rate "
            f"{storm['cooldown_rate_per_minute']:.1f}/min; shortest gap between fetches "
            + (f"{gap:.2f} s" if gap is not None else "n/a")
            + f"; {storm['requests']:,} requests",
            unit=""))
    for name in ("memory_cache", "memory_e2e"):
        memory = results.get(name)
        if memory:
            grown = memory["growth_after_bound_mb"]
            # Bounded: the entries stay at the bound and, after it, RSS moves by no more than
            # a tenth of what the bound itself costs (the dict's table is rebuilt in steps as
            # old entries are evicted; a leak would keep growing with every new token).
            bounded = memory["held_at_end"] <= memory["bound"] and grown <= max(
                2.0, 0.10 * (memory["rss_at_bound_mb"] - memory["rss_baseline_mb"]))
            targets.append(_target(
                f"{memory['entries']:,} "
                f"{'entries through the cache' if name == 'memory_cache' else 'tokens end to end'}"
                f": RSS growth after the bound", grown, "<= 10% of the bound's own memory",
                bounded,
                f"{memory['entries']:,} distinct, bound {memory['bound']:,}: "
                f"RSS {memory['rss_baseline_mb']:.0f} -> {memory['rss_at_bound_mb']:.0f} MB "
                f"at the bound -> {memory['rss_final_mb']:.0f} MB at the end; "
                f"{memory['bytes_per_entry']:.0f} B/entry", unit=" MB"))
    return targets


HOSTILE_GOAL = 3.0  # a refused or tokenless request may cost this many ordinary ones


def _hostile_targets(results: Result) -> list[Result]:
    """Each hostile shape's CPU per request as a multiple of an ordinary request's."""
    from bench.hostile import SHAPES

    sockets, inproc = results.get("hostile") or {}, results.get("hostile_cost") or {}
    targets = []
    for name, shape in SHAPES.items():
        ratio = (sockets.get(name) or {}).get("over_ordinary")
        inside = inproc.get(f"{name}_over_ordinary")
        value: float | None = ratio if ratio is not None else inside
        if value is None:
            continue
        detail = f"HTTP {shape.status}"
        if ratio is not None:
            detail += (f"; server CPU per request {sockets[name]['cpu_us_per_request']:.1f} vs "
                       f"{sockets['ordinary']['cpu_us_per_request']:.1f} us (wrk)")
        if inside is not None:
            detail += (f"; in-process {inproc[f'{name}_us']['min']:.1f} vs "
                       f"{inproc['ordinary_us']['min']:.1f} us ({inside:.2f}x)")
        targets.append(_target(f"hostile: {shape.title} / ordinary (CPU)", value,
                               f"<= {HOSTILE_GOAL:g}x", value <= HOSTILE_GOAL, detail,
                               limit=("<=", HOSTILE_GOAL)))
    return targets


def _hostile_section(results: Result) -> list[str]:
    """The hostile requests, each next to an ordinary cached-token request."""
    from bench.hostile import SHAPES

    sockets, inproc = results.get("hostile") or {}, results.get("hostile_cost") or {}
    if not sockets and not inproc:
        return []
    out = [
        "## Hostile requests (refused or passed without a token)",
        "",
        "Requests any anonymous client can repeat, against a forward-auth gateway with one "
        "public route (`bench/hostile.py`), each as a multiple of an ordinary cached-token "
        "request on the same gateway: wrk over sockets (server CPU per request) and in-process "
        "(min of reps). The hostile header value is 8,000 bytes where the title says 8 KB.",
        "",
        "| request | status | req/s | CPU us/req | x ordinary | in-process us | x ordinary |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, title in (("ordinary", "ordinary: cached token, `GET /api/hello`"),
                        *((n, s.title) for n, s in SHAPES.items())):
        run = sockets.get(name) or {}
        inside = inproc.get(f"{name}_us") or {}
        status = run.get("status", SHAPES[name].status if name in SHAPES else 200)
        rps = f"{run['rps']:,.0f}" if run else "n/a"
        out.append(
            f"| {title} | {status} | {rps} | {_fmt(run.get('cpu_us_per_request'), '')} | "
            f"{_fmt(run.get('over_ordinary', 1.0 if run else None))} | "
            f"{_fmt(inside.get('min'), '')} | "
            f"{_fmt(inproc.get(f'{name}_over_ordinary', 1.0 if inside else None))} |")
    out += [""]
    if sockets.get("command"):
        out += [f"Gateway: `{sockets['command']}`", ""]
    if inproc.get("command"):
        out += [f"In-process: `{inproc['command']}`", ""]
    return out


def _fmt(value: float | None, unit: str = "x") -> str:
    if value is None:
        return "n/a"
    if unit == "x":
        return f"{value:.2f}x"
    if isinstance(value, int):
        return f"{value}{unit}"
    return f"{value:.1f}{unit}"


def _met(met: bool | None) -> str:
    return {True: "yes", False: "**NO**", None: "-"}[met]


def summary(results: Result) -> str:
    """The targets as plain text lines."""
    return "\n".join(
        f"{t['name']:55s} {_fmt(t['value'], t['unit']):>10s}  goal {t['goal']:28s} "
        f"met: {_met(t['met']).strip('*')}" for t in evaluate(results))


def _throughput_table(results: Result) -> list[str]:
    lines = ["| contender | req/s (median) | req/s per round | p50 ms | p99 ms | vs 1 | "
             "server CPU us/req | errors |", "|---|---:|---|---:|---:|---:|---:|---|"]
    floor = median_rps(results, "bare")
    for c in results.get("contenders", {}).values():
        runs = c["runs"]
        if not c["available"] or not runs:
            lines.append(f"| {c['title']} | {c['note'] or 'not run'} | | | | | | |")
            continue
        rps = statistics.median(r["rps"] for r in runs)
        errors = sum(r["non_2xx"] for r in runs), sum(r["socket_errors"] for r in runs)
        per_round = ", ".join(f"{r['rps']:,.0f}" for r in runs)
        versus = f"{rps / floor:.2f}" if floor else "n/a"
        cpu = [r["cpu_us_per_request"] for r in runs if r.get("cpu_us_per_request")]
        cpu_text = f"{statistics.median(cpu):.1f}" if cpu else "n/a"
        shown = "none" if errors == (0, 0) else f"non-2xx {errors[0]}, socket {errors[1]}"
        lines.append(
            f"| {c['title']} | {rps:,.0f} | {per_round} | "
            f"{statistics.median(r['p50_ms'] for r in runs):.2f} | "
            f"{statistics.median(r['p99_ms'] for r in runs):.2f} | {versus} | {cpu_text} | "
            f"{shown} |")
    return lines


def _markdown(results: Result) -> str:
    m = results["machine"]
    load = results.get("load", {})
    pin = results.get("pinning", {})
    out = [
        "# clerk-gateway benchmark",
        "",
        f"**Conditions:** {results.get('label') or 'not labelled'}. "
        f"Run {results['started']}, {results['seconds']:.0f} s in all; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}.",
        "",
        f"**Machine:** {m['cores']} cores ({m['cpu_model']}), {m['memory']} RAM, Linux "
        f"{m['kernel']}. Python {m['python']}, aiohttp {m['aiohttp']}, PyJWT {m['pyjwt']}, "
        f"cryptography {m['cryptography']}, nginx {m['nginx']}, wrk {m['wrk']}.",
        "",
        f"**Command:** `{results['command']}`",
        "",
        "Ratios between contenders of the same run are the headline; absolute numbers depend "
        "on the machine.",
        "",
        "## Targets",
        "",
        "| measure | value | goal | met | detail |",
        "|---|---:|---|---|---|",
    ]
    for t in results["targets"]:
        out.append(f"| {t['name']} | {_fmt(t['value'], t['unit'])} | {t['goal']} | "
                   f"{_met(t['met'])} | {t['detail']} |")
    out += ["", *missed.section(results, results["missed"])]
    out += [
        "## Throughput",
        "",
        f"Each contender: one process, pinned to CPU {pin.get('server_cpus') or '(unpinned)'}; "
        f"wrk pinned to CPU {pin.get('load_cpus') or '(unpinned)'}: "
        f"`wrk -t{load.get('threads')} -c{load.get('connections')} "
        f"-d{load.get('duration'):g}s` after an unrecorded {load.get('warmup'):g} s warm-up, "
        "`GET /api/hello` with the same `Authorization: Bearer` token for every contender. "
        "Contenders alternate within each round (the order rotates every round).",
        "",
        *_throughput_table(results),
        "",
    ]
    for loop in results.get("loop_passes", {}):
        if loop != results.get("headline_loop"):
            out += [f"### The same contenders on {loop}", "",
                    *_throughput_table(_loop_view(results, loop)), ""]
    out += _side_sections(results)
    out += _commands(results)
    return "\n".join(out) + "\n"


def _http_cost_section(http: Result) -> list[str]:
    """Where a forward-auth request's CPU goes, in one process without sockets."""
    rows = [("bare aiohttp, 200 on every path", "bare_us"),
            ("gateway forward-auth, fast door (the default)", "gateway_fa_us"),
            ("gateway forward-auth, `forward_auth.fast_path: false` (aiohttp door)",
             "gateway_fa_aiohttp_door_us"),
            ("gateway forward-auth, fast door, JSON access log at INFO",
             "gateway_fa_access_log_us")]
    out = [
        "## Forward-auth: where the time goes (in-process)",
        "",
        "Raw request bytes fed to each server's own connection protocol over an in-memory "
        "transport, the same cached token every time: CPU per request without sockets or wrk "
        f"({http['requests_per_rep']:,} requests x {http['reps']} reps, two alternating "
        "passes; min and median of reps).",
        "",
        "| server | min us | median us |",
        "|---|---:|---:|",
    ]
    for title, key in rows:
        if key in http:
            out.append(f"| {title} | {http[key]['min']:.1f} | {http[key]['median']:.1f} |")
    out += [
        "",
        "aiohttp's per-request machinery (request and response objects, a handler task, the "
        "router) costs more than the decision itself, so the gateway's forward-auth listener "
        "parses heads with llhttp and answers cached decisions without it (the fast door, "
        "README \"Forward-auth mode\"). What remains per request: the request id, reading the "
        "forwarded headers, path normalisation and route match, the cached-token look-up, the "
        "local revocation check, the rule, batched counters and the latency histogram.",
        "",
        f"Command: `{http.get('command', 'python -m bench.micro http-cost')}`",
        "",
    ]
    return out


def _split_section(results: Result) -> list[str]:
    """CPU per request by stage, for each mode (shares from the profile, microseconds from
    the throughput run's server CPU per request)."""
    split = results["split"]
    cpu = {"forward_auth": median_cpu(results, "gateway_fa"),
           "proxy": median_cpu(results, "gateway_proxy")}
    modes = [m for m in ("forward_auth", "proxy") if m in split]
    out = ["## CPU per request by stage", "",
           "One process on " + ", ".join(sorted({split[m]["loop"] for m in modes})) + " with the "
           "gateway's listener as `serve` builds it, a minimal upstream and keep-alive clients; "
           "cProfile's own time per function, each put in the stage of its module (`bench/"
           "split.py`). Shares come from the profile; microseconds are the share times the "
           "server CPU per request measured under wrk above.", "",
           "| stage | " + " | ".join(f"{m} share | {m} us" for m in modes) + " |",
           "|---|" + "---:|---:|" * len(modes)]
    for stage in ("parse", "decide", "relay", "write", "observe", "other"):
        cells = []
        for mode in modes:
            share = split[mode]["share"].get(stage, 0.0)
            us = f"{share * cpu[mode]:.1f}" if cpu[mode] else "n/a"
            cells.append(f"{share:.0%} | {us}")
        out.append(f"| {stage} | " + " | ".join(cells) + " |")
    out += ["", "Commands: " + "; ".join(f"`{split[m]['command']}`" for m in modes
                                         if "command" in split[m]), ""]
    return out


def _side_sections(results: Result) -> list[str]:
    out: list[str] = []
    if results.get("split"):
        out += _split_section(results)
    http = results.get("http_cost")
    if http and "gateway_fa_aiohttp_door_us" in http:
        out += _http_cost_section(http)
    out += _hostile_section(results)
    verify = results.get("verify")
    if verify:
        out += [
            "## First-seen vs cached token (in-process)",
            "",
            f"{verify['tokens']:,} distinct RS256 Clerk v2 tokens ({verify['token_bytes']} "
            f"bytes), {verify['passes']} interleaved passes; cached: one token "
            f"{verify['cached_reps']:,} times. Microseconds per token (median / min of passes).",
            "",
            "| path | median us | min us |",
            "|---|---:|---:|",
        ]
        for key, title in (("bare_pyjwt_us", "bare `jwt.decode(token, pubkey, "
                                              "algorithms=['RS256'])`"),
                           ("gateway_first_seen_us", "gateway `Verifier.verify`, first seen"),
                           ("gateway_cached_us", "gateway `Verifier.verify`, cached"),
                           ("rsa_verify_only_us", "RSA signature check alone (cryptography)")):
            out.append(f"| {title} | {verify[key]['median']:.2f} | {verify[key]['min']:.2f} |")
        out += ["", f"Command: `{verify['command']}`", ""]
    storm = results.get("storm")
    if storm:
        out += [
            "## Unknown-kid storm",
            "",
            f"A gateway with {storm.get('workers', 1)} workers (`serve`, one shared store) "
            f"reading keys from a JWKS URL (a DevIssuer on loopback that counts its "
            f"hits, so fetches are counted for all workers together), "
            f"`keys.unknown_kid_cooldown_seconds: {storm['cooldown_seconds']:g}`, flooded "
            f"for {storm['duration_seconds']:g} s with tokens whose header names a random `kid`: "
            f"{storm['requests']:,} requests ({storm['rps']:,.0f}/s, p99 {storm['p99_ms']:.2f} ms)"
            f", **{storm['key_fetches']} key fetches** "
            f"({storm['fetches_per_minute']:.1f}/min; the cooldown allows "
            f"{storm['cooldown_rate_per_minute']:.1f}/min, at most {storm['allowed_fetches']} in "
            f"this window; shortest gap between two fetches: "
            f"{_fmt(storm.get('min_seconds_between_fetches'), ' s')}). Gateway CPU per "
            f"rejected request: {_fmt(storm.get('cpu_us_per_request'), ' us')}. "
            f"A valid token right after the storm: HTTP "
            f"{storm['valid_token_after_storm']}.",
            "",
            f"Gateway: `{storm['gateway_command']}`",
            "",
            f"Load: `{storm['wrk_command']}`",
            "",
        ]
    for name, title in (("memory_cache", "Memory: one million distinct tokens (cache)"),
                        ("memory_e2e", "Memory: distinct tokens verified end to end")):
        memory = results.get(name)
        if not memory:
            continue
        what = ("distinct verified-token entries (real `Verified` values built by the "
                "gateway's own claim and header code, keyed by sha256 like real tokens) put "
                "through the Verifier's `TokenCache`" if name == "memory_cache" else
                f"distinct {memory.get('algorithm', 'RS256')} tokens minted and verified "
                "through `Verifier.verify`")
        samples = ", ".join(f"{s['entries']:,}: {s['rss_mb']:.0f}" for s in memory["samples"])
        out += [
            f"## {title}",
            "",
            f"{memory['entries']:,} {what}, `token_cache_size` = {memory['bound']:,}. RSS "
            f"{memory['rss_baseline_mb']:.1f} MB before, {memory['rss_at_bound_mb']:.1f} MB when "
            f"the cache reached its bound, {memory['rss_final_mb']:.1f} MB after all "
            f"{memory['entries']:,} ({memory['growth_after_bound_mb']:+.1f} MB after the bound); "
            f"{memory['held_at_end']:,} entries held at the end; about "
            f"{memory['bytes_per_entry']:,.0f} bytes per cached token, so the default bound of "
            f"100,000 costs about {memory['bytes_per_entry'] * 100_000 / 2**20:,.0f} MB. "
            f"Took {memory['seconds']:.0f} s.",
            "",
            f"RSS (MB) by entries seen: {samples}",
            "",
            f"Command: `{memory['command']}`",
            "",
        ]
    for scaling in (results.get("scaling"), results.get("scaling_proxy")):
        if not scaling:
            continue
        mode = "Proxy mode" if scaling.get("mode") == "proxy" else "Forward-auth"
        out += [f"## Scaling with workers: {mode}", ""]
        if not scaling["available"]:
            out += [scaling["note"], ""]
        else:
            out += [
                f"{mode}, nothing pinned (the workers need both cores, and wrk shares "
                f"them): GATEWAY_WORKERS=1 {scaling['median_w1']:,.0f} req/s, "
                f"GATEWAY_WORKERS=2 {scaling['median_w2']:,.0f} req/s "
                f"({scaling['ratio']:.2f}x). Per round: 1 worker "
                f"{', '.join(f'{x:,.0f}' for x in _runs(scaling, 1))}; 2 workers "
                f"{', '.join(f'{x:,.0f}' for x in _runs(scaling, 2))}.",
                "",
            ]
    return out


def _runs(scaling: dict[str, Any], workers: int) -> list[float]:
    """Per-round req/s for a worker count (keys are ints in memory, strings from JSON)."""
    rps = scaling["rps"]
    return list(rps.get(workers, rps.get(str(workers), [])))


def _commands(results: Result) -> list[str]:
    out = ["## Exact commands", "",
           "The token (`$TOKEN`) and the PEM key (`<PEM>`) are generated by the harness for "
           "each run (RSA-2048, RS256, Clerk v2 claims with an organization).", ""]
    if results.get("upstream_command"):
        out.append(f"- shared static upstream: `{results['upstream_command']}`")
    for c in results.get("contenders", {}).values():
        if c["server_command"]:
            out.append(f"- {c['title']}: `{c['server_command']}`")
    runs: list[dict[str, Any]] = next(
        (c["runs"] for c in results.get("contenders", {}).values() if c["runs"]), [])
    if runs:
        out.append(f"- load (port varies per contender): `{runs[0]['command']}`")
    out += ["", "Why this load: the machine's cores are split so that the server under test "
            "owns one core and wrk (one thread, which needs well under a core at these rates) "
            "and the static nginx upstream share the other; every contender, the gateway "
            "included, is a single process, so the ratios compare equal hardware. 32 "
            "connections keep a single-process server saturated without piling up queueing "
            "latency.", ""]
    return out


def write(results: Result, json_path: Path, md_path: Path) -> None:
    """Write results.json (everything, plus the evaluated targets and the missed ones, by how
    much and why) and results.md."""
    targets = evaluate(results)
    results = {**results, "targets": targets, "missed": missed.analyse(results, targets)}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    md_path.write_text(_markdown(results))
