"""Each missed target with data: by how much, and why, generated from the run's own numbers.

A throughput goal between two single-process contenders on one core is restated as a budget of
server CPU per request (req/s ~ 1 / CPU per request): `top / bottom >= g` means top may spend
at most bottom's CPU per request / g, and `top / bottom <= g` means bottom may spend at most
top's x g. A proxy's budget is set against the floor (`relay_floor`: the loop, the sockets and
llhttp, no HTTP semantics) and the mode's stage split (bench/split.py). A p99 goal is shown
with both contenders' p50 and p99 next to what throughput alone predicts for the p50.
"""

from __future__ import annotations

from typing import Any

from bench.medians import median_cpu, median_of, median_rps

__all__ = ["FLOOR", "analyse", "budget", "latency", "section", "shortfall_percent"]

Result = dict[str, Any]

FLOOR = "relay_floor"
FLOOR_TITLE = "byte relay with llhttp parsing, no HTTP semantics"
PROXIES = frozenset({"gateway_proxy", "gateway_proxy_asserted"})  # what the floor sits under
SPLIT_MODE = {"gateway_fa": "forward_auth", "gateway_proxy": "proxy"}  # bench/split.py runs
STAGES_NAMED = 2  # the largest stages named in the text


def shortfall_percent(value: float, op: str, goal: float) -> float:
    """How far value is on the wrong side of the goal, in percent of the goal."""
    return (goal - value) / goal * 100 if op == ">=" else (value - goal) / goal * 100


def _stages(results: Result, key: str, uses: float) -> list[Result] | None:
    """key's stage split scaled to its CPU per request, largest first (None: not measured)."""
    split = (results.get("split") or {}).get(SPLIT_MODE.get(key, ""))
    if not split:
        return None
    stages = [{"stage": stage, "share": share, "us": share * uses}
              for stage, share in split["share"].items() if share > 0]
    return sorted(stages, key=lambda s: -s["us"])


def _floor(results: Result, budget: float, uses: float) -> Result | None:
    """The relay floor's CPU per request and what the budget leaves above it."""
    floor = median_cpu(results, FLOOR)
    if floor is None:
        return None
    room = budget - floor
    above = uses - floor
    return {"key": FLOOR, "us": floor, "room_us": room, "above_us": above,
            "above_over_room": above / room if room > 0 else None}


def budget(results: Result, pair: list[str], op: str, goal: float) -> Result | None:
    """The CPU per request a req/s goal between two contenders allows, and where it goes."""
    top, bottom = pair
    top_us, bottom_us = median_cpu(results, top), median_cpu(results, bottom)
    if top_us is None or bottom_us is None:
        return None
    if op == ">=":
        key, reference, uses, limit = top, bottom, top_us, bottom_us / goal
        rule = f"{top} <= {bottom}'s {bottom_us:.1f} us / {goal:g} = {limit:.1f} us"
    else:
        key, reference, uses, limit = bottom, top, bottom_us, top_us * goal
        rule = f"{bottom} <= {top}'s {top_us:.1f} us x {goal:g} = {limit:.1f} us"
    over = uses - limit
    return {
        "cpu_us": {top: top_us, bottom: bottom_us}, "budgeted": key, "reference": reference,
        "budget_us": limit, "rule": rule, "uses_us": uses, "over_budget_us": over,
        "over_budget_percent": over / limit * 100, "cut_percent": over / uses * 100,
        "floor": _floor(results, limit, uses) if key in PROXIES else None,
        "floor_applies": key in PROXIES,
        "stages": _stages(results, key, uses), "split_applies": key in SPLIT_MODE,
    }


def latency(results: Result, pair: list[str]) -> Result | None:
    """p50 and p99 of both contenders, and the p50 their throughput alone predicts."""
    connections = (results.get("load") or {}).get("connections")
    out: Result = {"connections": connections, "contenders": {}}
    for key in pair:
        rps = median_rps(results, key)
        p50, p99 = median_of(results, key, "p50_ms"), median_of(results, key, "p99_ms")
        if rps is None or p50 is None or p99 is None:
            return None
        out["contenders"][key] = {
            "rps": rps, "p50_ms": p50, "p99_ms": p99, "p99_over_p50": p99 / p50 if p50 else None,
            "p50_from_rps_ms": connections / rps * 1000 if connections and rps else None}
    top, bottom = (out["contenders"][k] for k in pair)
    out["rps_ratio"] = top["rps"] / bottom["rps"] if bottom["rps"] else None
    return out


def analyse(results: Result, targets: list[Result]) -> list[Result]:
    """One entry per target whose goal is not met (targets without data are left out)."""
    missed = []
    for target in targets:
        if target["met"] is not False or target["value"] is None:
            continue
        entry: Result = {key: target[key] for key in ("name", "value", "goal", "unit", "detail")}
        limit, pair = target.get("limit"), target.get("pair")
        if limit:
            entry["limit"] = limit
            entry["shortfall_percent"] = shortfall_percent(
                target["value"], limit["op"], limit["value"])
        if pair and limit and target.get("measure") == "rps":
            entry["cpu"] = budget(results, pair, limit["op"], limit["value"])
        if pair and target.get("measure") == "p99":
            entry["latency"] = latency(results, pair)
        missed.append(entry)
    return missed


def _number(value: float, unit: str) -> str:
    return f"{value:.2f}x" if unit == "x" else f"{value:g}{unit}"


def _cpu_lines(cpu: Result, titles: dict[str, str]) -> list[str]:
    key = cpu["budgeted"]
    lines = [
        "- Server CPU per request (median of rounds): " + ", ".join(
            f"{k} {v:.1f} us" for k, v in cpu["cpu_us"].items()) + ".",
        f"- Budget the goal implies: {cpu['rule']} per request; it uses {cpu['uses_us']:.1f} us"
        + (f", **{cpu['over_budget_us']:.1f} us over** ({cpu['over_budget_percent']:.0f}% over "
           f"the budget: {cpu['cut_percent']:.0f}% of its CPU per request must go)."
           if cpu["over_budget_us"] > 0 else
           ", within the budget by CPU per request (only the req/s ratio misses; see the "
           "per-round ratios)."),
    ]
    floor = cpu["floor"]
    if floor is not None:
        room = (f"the budget leaves {floor['room_us']:.1f} us above it for all HTTP work; "
                f"{key} spends {floor['above_us']:.1f} us above it"
                + (f" ({floor['above_over_room']:.2f}x that room)."
                   if floor["above_over_room"] is not None else ".")
                if floor["room_us"] > 0 else
                f"the budget is at or below the floor: no HTTP work fits in it on this loop; "
                f"{key} spends {floor['above_us']:.1f} us above the floor.")
        lines.append(f"- Floor ({titles.get(FLOOR, FLOOR_TITLE)}): {floor['us']:.1f} us per "
                     f"request; {room}")
    elif cpu["floor_applies"]:
        lines.append(f"- Floor: not measured in this run (contender `{FLOOR}`).")
    stages = cpu["stages"]
    if stages:
        largest = stages[0]
        rest = cpu["over_budget_us"] - largest["us"]
        lines.append(
            f"- Where {key}'s CPU goes (bench/split.py shares x its {cpu['uses_us']:.1f} us): "
            + ", ".join(f"{s['stage']} {s['us']:.1f} us ({s['share']:.0%})" for s in stages)
            + ". Largest: " + " and ".join(s["stage"] for s in stages[:STAGES_NAMED]) + "."
            + (f" Without the {largest['stage']} stage at all it would still be "
               f"{rest:.1f} us over the budget." if rest > 0 else
               f" The excess is {cpu['over_budget_us'] / largest['us']:.0%} of the "
               f"{largest['stage']} stage." if cpu["over_budget_us"] > 0 else ""))
    elif cpu["split_applies"]:
        lines.append("- Stage split: not measured in this run (bench/split.py).")
    return lines


def _latency_lines(lat: Result, cores: str) -> list[str]:
    (top, a), (bottom, b) = lat["contenders"].items()
    lines = ["- p50 / p99 (median of rounds): " + "; ".join(
        f"{k} {v['p50_ms']:.2f} / {v['p99_ms']:.2f} ms at {v['rps']:,.0f} req/s"
        for k, v in lat["contenders"].items()) + "."]
    if lat["connections"] and a["p50_from_rps_ms"] and b["p50_from_rps_ms"]:
        lines.append(
            f"- With {lat['connections']} connections on {cores}, latency follows throughput "
            f"(p50 ~= connections / req/s): {a['p50_from_rps_ms']:.2f} ms for {top}, "
            f"{b['p50_from_rps_ms']:.2f} ms for {bottom} (measured {a['p50_ms']:.2f} and "
            f"{b['p50_ms']:.2f}). {top}'s req/s is {lat['rps_ratio']:.2f}x {bottom}'s.")
    if a["p99_over_p50"] and b["p99_over_p50"]:
        lines.append(
            f"- p99 / p50: {a['p99_over_p50']:.2f} for {top}, {b['p99_over_p50']:.2f} for "
            f"{bottom}" + (f": {top}'s tail is no wider than {bottom}'s, so its p99 misses "
                           "through its p50, i.e. through throughput."
                           if a["p99_over_p50"] <= b["p99_over_p50"] else
                           f": {top}'s tail is wider than {bottom}'s as well."))
    return lines


def section(results: Result, missed: list[Result]) -> list[str]:
    """The markdown section: one subsection per missed target."""
    titles = {k: c.get("title", k) for k, c in (results.get("contenders") or {}).items()}
    server = (results.get("pinning") or {}).get("server_cpus")
    cores = "one server core" if server and "," not in server else "an unpinned server"
    out = ["## Missed targets: by how much and why", "",
           "Generated from this run's numbers for every target with data whose goal is not "
           f"met ({results.get('headline_loop', 'the headline loop')}). A req/s goal between "
           "two single-process contenders is restated as a budget of server CPU per request "
           f"(req/s ~ 1 / CPU per request); `{FLOOR}` is the floor under any Python proxy.", ""]
    if not missed:
        judged = sum(1 for t in results.get("targets") or [] if t["met"] is not None)
        return [*out, f"None: all {judged} targets with data and a goal are met." if judged
                else "None measured: no target with a goal has data in this run.", ""]
    for entry in missed:
        limit = entry.get("limit")
        how = ""
        if limit:
            how = (f": {'short' if limit['op'] == '>=' else 'over'} by "
                   f"{entry['shortfall_percent']:.0f}%")
        out += [f"### {entry['name']}", "",
                f"- **{_number(entry['value'], entry['unit'])} vs goal {entry['goal']}{how}.** "
                f"{entry['detail']}."]
        if entry.get("cpu"):
            out += _cpu_lines(entry["cpu"], titles)
        if entry.get("latency"):
            out += _latency_lines(entry["latency"], cores)
        out.append("")
    return out
