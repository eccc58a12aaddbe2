"""``python -m bench``: every workload, median of 3 runs, results in ``bench/results/``.

Options: ``--quick`` (1 run, short windows, smaller sizes), ``--only echo,sse``,
``--variants h3-fastapi,starlette``, ``--runs N``, ``--profile VARIANT`` (py-spy
speedscope profiles of that Python variant into ``bench/results/profiles/``).
A full run writes ``latest.{json,md,png}`` and copies the chart to
``docs/benchmarks.png``; other runs write ``<name>.*`` (default ``partial``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from . import report
from .harness import RESULTS, ROOT, BenchError, ensure_node, load_snapshot, machine_info
from .workloads import WORKLOADS, Settings, Workload


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 run, short windows (~2 min)")
    parser.add_argument("--only", default="", help=f"comma list of {','.join(WORKLOADS)}")
    parser.add_argument("--variants", default="", help="comma list of variant keys to run")
    parser.add_argument("--runs", type=int, default=None, help="runs per number (default 3)")
    parser.add_argument("--out", default=None, help="results name (default latest/partial)")
    parser.add_argument("--profile", default=None, help="py-spy the given variant ('all': every)")
    parser.add_argument(
        "--h3-path", default=None, help="import h3_fastapi from this directory (a patched copy)"
    )
    parser.add_argument("--render", default=None, help="rewrite NAME.md/.png from NAME.json")
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("BEFORE", "AFTER"),
        help="write the targets of two result files side by side to OUT.md (default compare)",
    )
    parser.add_argument("--list", action="store_true", help="list workloads and variants")
    return parser.parse_args(argv)


def _selected(names: str) -> list[Workload]:
    if not names:
        return list(WORKLOADS.values())
    chosen = []
    for name in names.split(","):
        if name.strip() not in WORKLOADS:
            raise SystemExit(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
        chosen.append(WORKLOADS[name.strip()])
    return chosen


def _run_workload(
    workload: Workload, settings: Settings, runs: int, only_variants: set[str]
) -> dict[str, Any]:
    variants = [v for v in workload.variants if not only_variants or v.key in only_variants]
    skipped = {v.key: v.unavailable for v in variants if not v.available()}
    active = [v for v in variants if v.key not in skipped]
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    print(f"\n== {workload.title}", flush=True)
    with workload.context() as ctx:
        for run in range(runs):
            # Rotate the order each run so drift in machine load spreads over all variants.
            order = active[run % len(active) :] + active[: run % len(active)] if active else []
            for case in workload.cases:
                for variant in order:
                    started = time.monotonic()
                    try:
                        sample = workload.measure(workload, variant, case, settings, ctx)
                    except (BenchError, RuntimeError, OSError) as exc:
                        sample = {"error": str(exc).strip()}
                    sample["seconds_total"] = time.monotonic() - started
                    samples.setdefault((case.key, variant.key), []).append(sample)
                    _print_sample(run, case.key, variant.label, workload.unit, sample)
    cases = []
    for case in workload.cases:
        rows = []
        for variant in variants:
            runs_ = samples.get((case.key, variant.key), [])
            row = {"key": variant.key, "label": variant.label, "runs": runs_}
            row.update(report.summarize_variant(runs_))
            if variant.key in skipped:
                row["skipped"] = skipped[variant.key]
            rows.append(row)
        cases.append(
            {"key": case.key, "args": workload.case_args(case, settings), "variants": rows}
        )
    summary: dict[str, Any] = {
        "key": workload.key,
        "title": workload.title,
        "unit": workload.unit,
        "higher_is_better": workload.higher_is_better,
        "describe": workload.describe,
        "anchor": workload.anchor,
        "cases": cases,
    }
    return summary


def _print_sample(run: int, case: str, label: str, unit: str, sample: dict[str, Any]) -> None:
    if "error" in sample:
        first = sample["error"].splitlines()[0] if sample["error"] else "error"
        print(f"  run {run + 1} {case:<16} {label:<40} FAILED: {first}", flush=True)
        return
    extra = ""
    if "mib_per_s" in sample:
        extra += f" {sample['mib_per_s']:8.1f} MiB/s"
    if "peak_rss_mib" in sample:
        extra += f" peak {sample['peak_rss_mib']:6.1f} MiB"
    if sample.get("p99_ms") is not None:
        extra += f" p50 {sample['p50_ms']:7.1f} ms p99 {sample['p99_ms']:7.1f} ms"
    print(
        f"  run {run + 1} {case:<16} {label:<40} {sample['value']:>12,.1f} {unit}"
        f"  load {sample.get('load_cpu_pct', 0):3.0f}%"
        f"  server {sample.get('server_cpu_pct', 0):3.0f}%"
        f"  core0 {sample.get('core0_busy_pct', 0):3.0f}%"
        f"  core1 {sample.get('core1_busy_pct', 0):3.0f}%{extra}",
        flush=True,
    )


def _write(results: dict[str, Any], name: str) -> None:
    """``NAME.json``, ``NAME.md`` and ``NAME.png``; a full run also updates the docs chart."""
    json_path = RESULTS / f"{name}.json"
    report.write_json(json_path, results)
    markdown = report.markdown(results)
    (RESULTS / f"{name}.md").write_text(markdown)
    report.chart(results, RESULTS / f"{name}.png")
    if name == "latest":
        shutil.copyfile(RESULTS / "latest.png", ROOT / "docs" / "benchmarks.png")
    print()
    print(markdown)
    print(f"bench: wrote {json_path.relative_to(ROOT)} (+ .md, .png)")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.list:
        for workload in WORKLOADS.values():
            keys = ", ".join(v.key for v in workload.variants)
            print(f"{workload.key:<10} {workload.title}  [{keys}]")
        return 0
    if args.compare:
        before, after = (json.loads((RESULTS / f"{n}.json").read_text()) for n in args.compare)
        path = RESULTS / f"{args.out or 'compare'}.md"
        path.write_text(report.compare(before, after))
        print(path.read_text())
        return 0
    if args.render:
        _write(json.loads((RESULTS / f"{args.render}.json").read_text()), args.render)
        return 0
    try:
        ensure_node()
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    workloads = _selected(args.only)
    # SIGTERM unwinds like Ctrl+C: every server, broker and load generator is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if args.h3_path:
        os.environ["BENCH_H3_PATH"] = str(Path(args.h3_path).resolve())
    settings = Settings(quick=args.quick, profile=args.profile)
    runs = args.runs or (1 if args.quick else 3)
    full = not (args.only or args.variants or args.quick or args.profile or args.h3_path)
    name = args.out or ("latest" if full and runs >= 3 else "partial")
    started = load_snapshot()
    print(f"bench: {started['uptime']}", flush=True)
    t0 = time.monotonic()
    results: dict[str, Any] = {
        "meta": {
            "machine": machine_info(),
            "started": started,
            "quick": args.quick,
            "runs": runs,
            "argv": sys.argv[1:] if argv is None else argv,
            "h3_path": os.environ.get("BENCH_H3_PATH"),
        },
        "workloads": [],
        "targets": [],
    }
    only_variants = {v.strip() for v in args.variants.split(",") if v.strip()}
    for workload in workloads:
        summary = _run_workload(workload, settings, runs, only_variants)
        results["workloads"].append(summary)
        results["targets"] += [report.check_target(t, summary) for t in workload.targets]
        # Saved after every workload: a failure later loses only what was running.
        report.write_json(RESULTS / f"{name}.json", results)
    results["meta"]["finished"] = load_snapshot()
    # Servers import h3_fastapi afresh: a change during the run would mix versions.
    end = machine_info()
    results["meta"]["h3_changed_during_run"] = (
        end["h3_tree"] != results["meta"]["machine"]["h3_tree"]
    )
    results["meta"]["seconds"] = round(time.monotonic() - t0, 1)

    _write(results, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
