"""Merge the workloads of a later partial run into a full one and re-render it.

``python -m bench.merge RERUN [--into latest]``: every workload of
``bench/results/RERUN.json`` replaces the one of the same key in
``INTO.json``; the targets are checked again on the merged medians and the
header of ``INTO.md`` says which workloads were measured again, when, and on
which h3_fastapi commit. For a late change that moves only some workloads,
without another full run of the rest.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import report
from .__main__ import _write
from .harness import RESULTS
from .workloads import WORKLOADS


def merge(full: dict[str, Any], rerun: dict[str, Any]) -> dict[str, Any]:
    """``full`` with ``rerun``'s workloads in place of its own, targets checked again."""
    replaced = {w["key"]: w for w in rerun["workloads"]}
    full["workloads"] = [replaced.get(w["key"], w) for w in full["workloads"]]
    by_key = {w["key"]: w for w in full["workloads"]}
    full["targets"] = [
        report.check_target(target, by_key[workload.key])
        for workload in WORKLOADS.values()
        if workload.key in by_key
        for target in workload.targets
    ]
    machine = rerun["meta"]["machine"]
    full["meta"].setdefault("reruns", []).append(
        {
            "workloads": sorted(replaced),
            "finished": rerun["meta"]["finished"]["time"],
            "h3_commit": machine.get("h3_commit") or machine["git_commit"],
        }
    )
    return full


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rerun", help="name of the partial run (bench/results/NAME.json)")
    parser.add_argument("--into", default="latest", help="name of the full run to update")
    args = parser.parse_args(argv)
    full = json.loads((RESULTS / f"{args.into}.json").read_text())
    rerun = json.loads((RESULTS / f"{args.rerun}.json").read_text())
    _write(merge(full, rerun), args.into)
    return 0


if __name__ == "__main__":
    sys.exit(main())
