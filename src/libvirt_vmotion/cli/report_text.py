"""The text report's sections that explain the figures: forecast vs outcome, decisions, cutover.

Pure: no I/O, no clock, no logging. Each function reads one section of the JSON
report (the keys ``report.schema.json`` documents) and returns text lines, none
when the section is absent, so ``render_text`` shows what the JSON already has.
Values of an unexpected type read as unknown (``n/a``), never as an error: the
text report must print whatever a run left behind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

_FORECAST_ROWS: Final = (
    # (label, measured/error key, prediction key, unit, decimals)
    ("time", "total_time_s", "total_time_s", " s", 1),
    ("rounds", "rounds", "rounds", "", 0),
    ("pause", "downtime_ms", "expected_downtime_ms", " ms", 0),
    ("data", "data_mib", "data_mib", " MiB", 1),
)


def _number(value: object, unit: str = "", decimals: int = 1) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "n/a"
    return f"{value:.{decimals}f}{unit}"


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _items(value: object) -> Sequence[object]:
    return value if isinstance(value, list | tuple) else ()


def forecast_lines(forecast: object) -> list[str]:
    """Predicted / measured / error % for time, rounds, pause and data.

    The error is the prediction's, relative to what was measured (``-25%``: the
    forecast said a quarter fewer rounds than it took).
    """
    if not isinstance(forecast, Mapping):
        return []
    prediction = forecast.get("prediction")
    if not isinstance(prediction, Mapping):
        why = forecast.get("error") or "pre-flight made none"
        return [f"  forecast          none ({why})"]
    measured, errors = _mapping(forecast.get("measured")), _mapping(forecast.get("error_pct"))
    lines = [f"  forecast vs outcome {'predicted':>12} {'measured':>12} {'error':>9}"]
    for label, key, pkey, unit, decimals in _FORECAST_ROWS:
        error = errors.get(key)
        shown = f"{error:+.1f}%" if isinstance(error, int | float) else "n/a"
        lines.append(
            f"    {label:<17}"
            f" {_number(prediction.get(pkey), unit, decimals):>12}"
            f" {_number(measured.get(key), unit, decimals):>12}"
            f" {shown:>9}"
        )
    strategy, reason = prediction.get("strategy"), prediction.get("reason")
    if strategy or reason:
        lines.append(f"    predicted strategy {strategy or 'n/a'}: {reason or ''}".rstrip(": "))
    return lines


_ACTION_FIGURES: Final = (("downtime_ms", " ms"), ("bandwidth_mib_s", " MiB/s"), ("percent", "%"))


def action_text(action: object) -> str:
    """One action as a person reads it: ``set-max-downtime 60 ms``, ``throttle 40%``."""
    if not isinstance(action, Mapping):
        return str(action)  # a report_version 1 action: already text
    name = str(action.get("action", "?"))
    figures = [f"{action[key]}{unit}" for key, unit in _ACTION_FIGURES if key in action]
    if action.get("reason"):
        figures.append(f"({action['reason']})")
    return " ".join([name, *figures])


def decision_lines(convergence: object) -> list[str]:
    """The controller's decisions, one line each: when, round, rule, reason, actions."""
    decisions = _items(_mapping(convergence).get("decisions"))
    if not decisions:
        return []
    lines = [f"  decisions         {len(decisions)} (at, round, rule: reason -> actions)"]
    for d in decisions:
        decision = _mapping(d)
        rule = decision.get("rule") or decision.get("state") or "?"
        actions = ", ".join(action_text(a) for a in _items(decision.get("actions")))
        lines.append(
            f"    {_number(decision.get('at_s'), ' s', 2):>9}  round"
            f" {_number(decision.get('round'), decimals=0):>3}  {rule}:"
            f" {decision.get('reason', '')}" + (f" -> {actions}" if actions else "")
        )
    return lines


def _sent_text(cutover: Mapping[str, object]) -> str:
    counts = _mapping(cutover.get("announcements_sent"))
    if not counts:
        notify = _mapping(cutover.get("notify"))
        off = bool(notify) and not any(notify.values())
        return "nothing (announcing turned off)" if off else "nothing"
    sent = ", ".join(f"{n} {kind.upper()}" for kind, n in sorted(counts.items()))
    first = cutover.get("first_announcement_after_resume_ms")
    schedule = _mapping(cutover.get("schedule"))
    where = sorted({str(_mapping(a).get("bridge")) for a in _items(cutover.get("announcements"))})
    return (
        sent
        + (f" out of {', '.join(w for w in where if w != 'None')}" if where else "")
        + (f", first {_number(first, ' ms')} after the resume" if first is not None else "")
        + (
            f" ({schedule.get('count')} rounds {schedule.get('interval_ms')} ms apart)"
            if schedule
            else ""
        )
    )


def _address_lines(cutover: Mapping[str, object]) -> list[str]:
    lines = []
    for a in _items(cutover.get("addresses")):
        addr = _mapping(a)
        verdict = "announced" if addr.get("announced") else f"not announced: {addr.get('why_not')}"
        lines.append(
            f"    address         {addr.get('ip')} ({addr.get('source')}) on {addr.get('mac')}:"
            f" {verdict}"
        )
    return lines


def _mac_lines(cutover: Mapping[str, object]) -> list[str]:
    lines = []
    for e in _items(cutover.get("dest_fdb")):
        entry = _mapping(e)
        where = f"{entry.get('mac')} on {entry.get('bridge')}"
        if entry.get("verified"):
            after = _number(entry.get("after_resume_ms"), " ms")
            lines.append(
                f"    MAC seen        {where} port {entry.get('port')}, {after} after resume"
            )
        else:
            lines.append(f"    MAC NOT seen    {where}: {entry.get('detail', 'not verified')}")
    switch = cutover.get("switch")
    if isinstance(switch, Mapping):
        if switch.get("learned"):
            lines.append(
                f"    switch          {switch.get('bridge')} moved {switch.get('mac')} from"
                f" {switch.get('port_before')} to {switch.get('port_after')},"
                f" {_number(switch.get('learned_after_resume_ms'), ' ms')} after resume"
            )
        else:
            lines.append(f"    switch          {switch.get('bridge')} did not learn the MAC's move")
    removed = _items(cutover.get("source_fdb_removed"))
    if "source_fdb_removed" in cutover:
        entries = "entry" if len(removed) == 1 else "entries"
        lines.append(f"    source bridge   {len(removed)} stale {entries} removed")
    return lines


def cutover_lines(cutover: object) -> list[str]:
    """The network cutover: its verdict, what was sent, which addresses, where the MAC was seen."""
    if not isinstance(cutover, Mapping):
        return []
    result = str(cutover.get("result", "n/a"))
    lines = [f"  network cutover   {result}"]
    if result.startswith("skipped"):
        return lines
    if cutover.get("resumed_seen") is False:
        lines.append(f"    resume not seen {cutover.get('detail', '')}".rstrip())
    lines.append(f"    sent            {_sent_text(cutover)}")
    lines += _address_lines(cutover)
    lines += _mac_lines(cutover)
    lines += [f"    problem         {e}" for e in _items(cutover.get("errors"))]
    lines += [f"    problem         {e}" for e in _items(cutover.get("announce_errors"))]
    return lines
