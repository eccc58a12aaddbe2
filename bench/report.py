"""Turn samples into medians, ratios and target checks; write JSON, Markdown and a PNG chart."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from .workloads import Target

SUBJECT = "h3-fastapi"


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize_variant(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the headline value and of the side numbers (CPU, RSS) over the runs."""
    ok = [r for r in runs if "error" not in r]
    summary: dict[str, Any] = {"median": median([r["value"] for r in ok])}
    for key in (
        "load_cpu_pct",
        "server_cpu_pct",
        "core0_busy_pct",
        "core1_busy_pct",
        "mib_per_s",
        "peak_rss_mib",
        "base_rss_mib",
        "rss_mib",
        "cpu_us_per_delivery",
        "broker_us_per_delivery",
        "broker_cpu_pct",
        "p50_ms",
        "p99_ms",
    ):
        values = [r[key] for r in ok if r.get(key) is not None]
        if values:
            summary[f"median_{key}"] = median(values)
    # Throughput per second of server CPU: robust when other processes share the core.
    per_cpu = [
        r["value"] / (r["server_cpu_pct"] / 100)
        for r in ok
        if r.get("server_cpu_pct") and r.get("unit") != "KiB/connection"
    ]
    if per_cpu:
        summary["median_per_cpu"] = median(per_cpu)
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        summary["errors"] = errors
    return summary


def _metric(variant: dict[str, Any], metric: str) -> float | None:
    if metric == "value":
        value: float | None = variant.get("median")
        return value
    return variant.get(f"median_{metric}")


def check_target(target: Target, workload: dict[str, Any]) -> dict[str, Any]:
    """Evaluate one target on a summarised workload."""
    out: dict[str, Any] = {"text": target.text, "workload": workload["key"], "case": target.case}
    out.update(variant=target.variant, anchor=target.anchor)
    out.update(bound=target.bound, op=target.op, kind=target.kind, metric=target.metric)
    case = next((c for c in workload["cases"] if c["key"] == target.case), None)
    variants = {v["key"]: v for v in (case["variants"] if case else [])}
    subject = variants.get(target.variant)
    anchor = variants.get(target.anchor)
    a = _metric(subject, target.metric) if subject else None
    b = _metric(anchor, target.metric) if anchor else None
    if a is None or b is None or (target.kind == "ratio" and not b):
        out.update(measured=None, met=None)
        return out
    measured = a / b if target.kind == "ratio" else a - b
    met = measured >= target.bound if target.op == ">=" else measured <= target.bound
    out.update(measured=measured, met=met, subject_value=a, anchor_value=b)
    if target.kind == "ratio" and target.metric == "value" and subject and anchor:
        a_cpu = subject.get("median_per_cpu")
        b_cpu = anchor.get("median_per_cpu")
        if a_cpu and b_cpu:
            out["per_cpu_ratio"] = a_cpu / b_cpu
    return out


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}%"


def _target_cell(target: dict[str, Any]) -> str:
    measured = target["measured"]
    if measured is None:
        return "not measured"
    if target["kind"] == "ratio":
        # Three decimals when two would round onto the bound and hide the verdict.
        close = round(measured, 2) == round(target["bound"], 2)
        return f"{measured:.3f}x" if close else f"{measured:.2f}x"
    return f"{measured:+.2f} KiB"


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "—"}[met]


def _fastest(case: dict[str, Any], anchor_key: str, higher_is_better: bool) -> str:
    """``Fastest ...: <server>``, with its ratio to the anchor, raw and per server CPU-second."""
    measured = [
        v for v in case["variants"] if v["key"] != anchor_key and v.get("median") is not None
    ]
    anchor = next((v for v in case["variants"] if v["key"] == anchor_key), None)
    if not measured:
        return f"- **{case['key']}**: no server measured."
    pick = max if higher_is_better else min
    best = pick(measured, key=lambda v: v["median"])
    text = f"- **{case['key']}**: fastest is **{best['label']}** ({_fmt(best['median'])}"
    if anchor and anchor.get("median"):
        text += f", {best['median'] / anchor['median']:.2f}x {anchor['label']}"
    text += ")"
    with_cpu = [v for v in measured if v.get("median_per_cpu")]
    if with_cpu:
        cpu_best = pick(with_cpu, key=lambda v: v["median_per_cpu"])
        text += (
            f"; per server CPU-second: **{cpu_best['label']}** ({_fmt(cpu_best['median_per_cpu'])}"
        )
        if anchor and anchor.get("median_per_cpu"):
            text += f", {cpu_best['median_per_cpu'] / anchor['median_per_cpu']:.2f}x Node"
        text += ")"
    return text + "."


def markdown(data: dict[str, Any]) -> str:
    """The results as Markdown: targets first, then one table per workload."""
    meta = data["meta"]
    machine = meta["machine"]
    modified = " (modified)" if machine["git_dirty"] else ""
    quick = "; **quick mode**" if meta["quick"] else ""
    lines = [
        "<!-- generated by `python -m bench`; do not edit by hand -->",
        f"Measured {meta['finished']['time']} on {machine['cpu']}"
        f" ({machine['cores']} cores, {machine['memory_gib']} GiB),"
        f" Linux {machine['kernel']}, Python {machine['python']},"
        f" Node {machine['node'] or 'absent'}; h3_fastapi as of"
        f" `{machine.get('h3_commit') or machine['git_commit']}`{modified}."
        f" {meta['runs']} run(s) per number, median shown{quick}.",
        "",
        f"Machine load before: `{meta['started']['uptime']}`; after:"
        f" `{meta['finished']['uptime']}`.",
        "",
    ]
    if meta.get("h3_changed_during_run"):
        lines += ["**h3_fastapi changed during this run: its numbers mix two versions.**", ""]
    for rerun in meta.get("reruns", ()):  # python -m bench.merge
        lines += [
            f"Measured again {rerun['finished']} and merged in (`python -m bench.merge`),"
            f" h3_fastapi as of `{rerun['h3_commit']}`: {', '.join(rerun['workloads'])}.",
            "",
        ]
    lines += [
        "| Target | Measured | Result | Same ratio per server CPU-second |",
        "|---|---|---|---|",
    ]
    for target in data["targets"]:
        per_cpu = target.get("per_cpu_ratio")
        cpu_cell = "—" if per_cpu is None else f"{per_cpu:.2f}x"
        verdict = _verdict(target["met"])
        lines.append(f"| {target['text']} | {_target_cell(target)} | {verdict} | {cpu_cell} |")
    for workload in data["workloads"]:
        lines += ["", f"### {workload['title']}", "", workload["describe"], ""]
        if workload["key"] == "backplanes":
            lines += _backplanes_table(workload, machine.get("backplanes_placement"))
            continue
        better = "higher is better" if workload["higher_is_better"] else "lower is better"
        proxy = workload["key"] == "proxy"
        latency = workload["key"] == "proxy-open"
        memory = workload["key"] == "memory"
        anchor_key = workload.get("anchor")
        versus_head = "this vs h3 on Node" if anchor_key else "h3-fastapi vs this"
        head = f"| Case | Variant | Median ({workload['unit']}, {better}) | {versus_head} |"
        rule = "|---|---|---|---|"
        if not memory:
            head += f" Per server CPU-s | {versus_head} (per CPU-s) |"
            rule += "---|---|"
        if proxy:
            head += " MiB/s | Peak RSS (MiB) |"
            rule += "---|---|"
        if latency:
            head += " p50 (ms) | p99 (ms) |"
            rule += "---|---|"
        if memory:
            head += " RSS at 10k (MiB) |"
            rule += "---|"
        head += " Load gen CPU | Server CPU | Runs |"
        rule += "---|---|---|"
        lines += [head, rule]
        fastest_lines: list[str] = []
        for case in workload["cases"]:
            if anchor_key:
                fastest_lines.append(_fastest(case, anchor_key, workload["higher_is_better"]))
            subject_key = anchor_key or SUBJECT
            subject = next((v for v in case["variants"] if v["key"] == subject_key), None)
            subject_value = subject["median"] if subject else None
            for index, variant in enumerate(case["variants"]):
                value = variant["median"]
                if variant["key"] == subject_key or value is None or subject_value is None:
                    versus = "—"
                elif memory:
                    versus = f"{subject_value - value:+.2f} KiB"
                elif anchor_key:
                    versus = f"{value / subject_value:.2f}x" if subject_value else "—"
                else:
                    versus = f"{subject_value / value:.2f}x" if value else "—"
                runs = " / ".join(_fmt(r.get("value")) for r in variant["runs"] if "value" in r)
                if variant.get("errors"):
                    runs += f" (failed: {variant['errors'][0][:80]})"
                if variant.get("skipped"):
                    runs = f"skipped: {variant['skipped']}"
                row = f"| {case['key'] if index == 0 else ''} | {variant['label']} |"
                row += f" {_fmt(value)} | {versus} |"
                if not memory:
                    per_cpu = variant.get("median_per_cpu")
                    subject_cpu = subject.get("median_per_cpu") if subject else None
                    cpu_versus = "—"
                    if variant["key"] != subject_key and per_cpu and subject_cpu:
                        ratio = per_cpu / subject_cpu if anchor_key else subject_cpu / per_cpu
                        cpu_versus = f"{ratio:.2f}x"
                    row += f" {_fmt(per_cpu)} | {cpu_versus} |"
                if proxy:
                    row += f" {_fmt(variant.get('median_mib_per_s'))} |"
                    row += f" {_fmt(variant.get('median_peak_rss_mib'))} |"
                if latency:
                    row += f" {_fmt(variant.get('median_p50_ms'))} |"
                    row += f" {_fmt(variant.get('median_p99_ms'))} |"
                if memory:
                    row += f" {_fmt(variant.get('median_rss_mib'))} |"
                row += f" {_pct(variant.get('median_load_cpu_pct'))} |"
                row += f" {_pct(variant.get('median_server_cpu_pct'))} | {runs} |"
                lines.append(row)
        if fastest_lines:
            lines += ["", *fastest_lines]
    lines += [
        "",
        "Load gen CPU: the Node load generator's CPU over the measured window, in percent of"
        " its one core (it is not the bottleneck while this stays well under 100%)."
        " Server CPU: the server process over the same window, in percent of its one core."
        " Per server CPU-s: the median divided by the server's CPU share, i.e. work per second"
        " of server CPU; it stays comparable when other processes take part of the core.",
        "",
    ]
    return "\n".join(lines)


def _backplanes_table(workload: dict[str, Any], placement: str | None) -> list[str]:
    """Deliveries/s and CPU per delivery per backplane (no h3-fastapi subject: all are)."""
    lines = [
        "| Case | Backplane | Deliveries/s (median) | CPU per delivery, servers + broker"
        " | of which broker | Servers + broker CPU | Load gen CPU | Runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case in workload["cases"]:
        for index, variant in enumerate(case["variants"]):
            runs = " / ".join(_fmt(r.get("value")) for r in variant["runs"] if "value" in r)
            if variant.get("errors"):
                runs += f" (failed: {' '.join(variant['errors'][0].split())[:120]})"
            if variant.get("skipped"):
                runs = f"skipped: {variant['skipped']}"
            cpu = variant.get("median_cpu_us_per_delivery")
            broker = variant.get("median_broker_us_per_delivery")
            broker_cell = _fmt(broker, "µs")
            if cpu and broker is not None:
                broker_cell += f" ({100 * broker / cpu:.1f}%)"
            lines.append(
                f"| {case['key'] if index == 0 else ''} | {variant['label']}"
                f" | {_fmt(variant['median'])}"
                f" | {_fmt(cpu, 'µs')} | {broker_cell}"
                f" | {_pct(variant.get('median_server_cpu_pct'))}"
                f" | {_pct(variant.get('median_load_cpu_pct'))} | {runs} |"
            )
    lines += [
        "",
        "CPU per delivery: CPU seconds of the server processes and the broker over the"
        " measured window, divided by the deliveries (median over the runs; lower is better)."
        " Servers + broker CPU: the same CPU in percent of one core; all of them share one"
        " core, so it stays at or under 100% and CPU per delivery is the fair comparison."
        + (f" Placement: {placement}." if placement else ""),
    ]
    return lines


def chart(data: dict[str, Any], path: Path) -> None:
    """A horizontal bar per anchor: how h3-fastapi compares (>1 means h3-fastapi is ahead)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[tuple[str, float, float | None]] = []
    covered: set[tuple[str, str, str, str]] = set()
    # Targets first: the advantage of the target's variant over its anchor, and
    # where the target puts the bar (a difference target becomes a ratio too).
    for t in data["targets"]:
        a, b = t.get("subject_value"), t.get("anchor_value")
        if not a or not b:
            continue
        lower_is_better = t["op"] == "<="
        advantage = b / a if lower_is_better else a / b
        if t["kind"] == "difference":
            bound = b / (b + t["bound"])
        else:
            bound = 1 / t["bound"] if lower_is_better else t["bound"]
        rows.append((t["text"], advantage, bound))
        covered.add((t["workload"], t["case"], t["variant"], t["anchor"]))
    # Then h3-fastapi against every other variant, for context.
    for workload in data["workloads"]:
        for case in workload["cases"]:
            subject = next((v for v in case["variants"] if v["key"] == SUBJECT), None)
            if subject is None or not subject["median"]:
                continue
            for variant in case["variants"]:
                key = (workload["key"], case["key"], SUBJECT, variant["key"])
                if variant["key"].startswith("h3-") or not variant["median"] or key in covered:
                    continue
                if workload["higher_is_better"]:
                    ratio = subject["median"] / variant["median"]
                else:
                    ratio = variant["median"] / subject["median"]
                rows.append(
                    (f"{workload['key']} {case['key']}: vs {variant['label']}", ratio, None)
                )
    if not rows:
        return
    height = 1.2 + 0.32 * len(rows)
    fig, ax = plt.subplots(figsize=(10, height), dpi=110)
    labels = [r[0] for r in rows][::-1]
    ratios = [r[1] for r in rows][::-1]
    targets = [r[2] for r in rows][::-1]
    colors = []
    for ratio, bound in zip(ratios, targets, strict=True):
        if bound is None:
            colors.append("#7a9cc6")
        else:
            colors.append("#3a9a5b" if ratio >= bound else "#d0573f")
    ax.barh(labels, ratios, color=colors)
    for y, (ratio, bound) in enumerate(zip(ratios, targets, strict=True)):
        ax.text(ratio, y, f" {ratio:.2f}x", va="center", fontsize=8)
        if bound is not None:
            ax.plot([bound, bound], [y - 0.4, y + 0.4], color="black", linewidth=2)
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ticks = [t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50) if t <= max(ratios) * 1.5]
    ax.set_xticks([t for t in ticks if t >= min(ratios) / 1.5])
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}x"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(
        "h3-fastapi advantage (log): throughput ratio; memory and RSS: anchor / h3-fastapi",
        fontsize=9,
    )
    ax.tick_params(axis="y", labelsize=8)
    quick = " (quick mode)" if data["meta"]["quick"] else ""
    ax.set_title(
        f"h3-fastapi vs anchors, median of {data['meta']['runs']}{quick}."
        " Black tick: target; green met, red missed, blue no target",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def compare(before: dict[str, Any], after: dict[str, Any]) -> str:
    """A Markdown table of every target in two runs, side by side."""

    def commit(data: dict[str, Any]) -> str:
        machine = data["meta"]["machine"]
        return str(machine.get("h3_commit") or machine["git_commit"])

    earlier = {t["text"]: t for t in before["targets"]}
    lines = [
        "<!-- generated by `python -m bench --compare`; do not edit by hand -->",
        f"| Target | Before (`{commit(before)}`, {before['meta']['finished']['time']}) |"
        f" After (`{commit(after)}`, {after['meta']['finished']['time']}) |",
        "|---|---|---|",
    ]
    for target in after["targets"]:
        old = earlier.get(target["text"])
        old_cell = f"{_target_cell(old)} ({_verdict(old['met'])})" if old else "—"
        new_cell = f"{_target_cell(target)} ({_verdict(target['met'])})"
        lines.append(f"| {target['text']} | {old_cell} | {new_cell} |")
    return "\n".join(lines) + "\n"
