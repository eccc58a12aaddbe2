"""Compare Autobahn|Testsuite results of ``/h3`` against raw ``/starlette``.

Called by ``scripts/autobahn.sh`` while its servers still run. For each
uvicorn WebSocket implementation it reads ``<out>/<ws>/reports/index.json``,
reruns (both agents) the cases where ``h3`` did worse, up to ``--rounds``
times, and fails when ``h3``'s best result is still worse than Starlette's
best on any case. Writes ``<out>/summary.json`` and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

OURS, THEIRS = "h3", "starlette"

# Lower is better. INFORMATIONAL cases have no pass/fail.
BEHAVIOR_RANK = {"OK": 0, "INFORMATIONAL": 0, "NON-STRICT": 1, "UNIMPLEMENTED": 2, "FAILED": 3}
CLOSE_RANK = {
    "OK": 0,
    "INFORMATIONAL": 0,
    "NON-STRICT": 1,
    "UNCLEAN": 2,
    "WRONG CODE": 2,
    "UNIMPLEMENTED": 2,
    "FAILED": 3,
    "FAILED BY CLIENT": 3,
}

Result = dict[str, Any]


def rank(result: Result) -> tuple[int, int]:
    """(behaviour, close behaviour) ranks of one case result; unknown counts as failed."""
    return (
        BEHAVIOR_RANK.get(result.get("behavior", ""), 3),
        CLOSE_RANK.get(result.get("behaviorClose", ""), 3),
    )


def best(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    return (min(a[0], b[0]), min(a[1], b[1]))


def case_key(case: str) -> list[int]:
    return [int(part) for part in case.split(".")]


def worse_cases(best_ranks: dict[str, dict[str, tuple[int, int]]]) -> list[str]:
    """Cases where ours is worse than theirs in behaviour or close behaviour."""
    ours, theirs = best_ranks[OURS], best_ranks[THEIRS]
    missing = sorted(set(theirs) - set(ours), key=case_key)
    worse = [
        case
        for case in ours
        if case in theirs and (ours[case][0] > theirs[case][0] or ours[case][1] > theirs[case][1])
    ]
    return sorted(set(worse) | set(missing), key=case_key)


def merge(best_ranks: dict[str, dict[str, tuple[int, int]]], index: dict[str, Any]) -> None:
    """Fold one ``index.json`` into the best rank seen per agent and case."""
    for agent, cases in index.items():
        seen = best_ranks.setdefault(agent, {})
        for case, result in cases.items():
            r = rank(result)
            seen[case] = best(seen[case], r) if case in seen else r


def rerun(ws_dir: Path, cases: list[str], round_no: int, py2: str, target: str) -> dict[str, Any]:
    spec = json.loads((ws_dir / "spec.json").read_text())
    spec["cases"] = cases
    spec["exclude-cases"] = []
    spec["outdir"] = str(ws_dir / f"rerun-{round_no}")
    spec_path = ws_dir / f"rerun-{round_no}.json"
    spec_path.write_text(json.dumps(spec))
    code = (
        "import site, sys; site.addsitedir(sys.argv[1]); "
        "sys.argv = ['wstest', '-m', 'fuzzingclient', '-s', sys.argv[2]]; "
        "from autobahntestsuite.wstest import run; sys.exit(run())"
    )
    with open(ws_dir / f"rerun-{round_no}.log", "wb") as log:
        subprocess.run(
            [py2, "-c", code, target, str(spec_path)],
            cwd=ws_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=120,
        )
    data: dict[str, Any] = json.loads((Path(spec["outdir"]) / "index.json").read_text())
    return data


def compare_one(ws_dir: Path, rounds: int, py2: str | None, target: str | None) -> dict[str, Any]:
    index = json.loads((ws_dir / "reports" / "index.json").read_text())
    best_ranks: dict[str, dict[str, tuple[int, int]]] = {}
    merge(best_ranks, index)
    first_worse = worse_cases(best_ranks)
    worse = first_worse
    reruns = 0
    while worse and py2 and target and reruns < rounds:
        reruns += 1
        merge(best_ranks, rerun(ws_dir, worse, reruns, py2, target))
        worse = worse_cases(best_ranks)
    counts = {
        agent: dict(Counter(f"{r['behavior']}/{r['behaviorClose']}" for r in cases.values()))
        for agent, cases in index.items()
    }
    not_ok = {
        agent: {
            case: f"{r['behavior']}/{r['behaviorClose']}"
            for case, r in sorted(cases.items(), key=lambda kv: case_key(kv[0]))
            if rank(r) != (0, 0)
        }
        for agent, cases in index.items()
    }
    return {
        "cases": len(index.get(OURS, {})),
        "counts": counts,
        "not_ok": not_ok,
        "worse_first_run": first_worse,
        "reruns": reruns,
        "worse": worse,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--py2")
    parser.add_argument("--target")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("ws", nargs="+")
    args = parser.parse_args(argv)

    summary = {ws: compare_one(args.out / ws, args.rounds, args.py2, args.target) for ws in args.ws}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    failed = False
    for ws, result in summary.items():
        print(f"autobahn: uvicorn --ws {ws}: {result['cases']} cases")
        for agent in (OURS, THEIRS):
            seen = sorted(result["counts"].get(agent, {}).items())
            counts = ", ".join(f"{k} {v}" for k, v in seen)
            print(f"  {agent:10} {counts}")
            for case, what in result["not_ok"].get(agent, {}).items():
                print(f"  {agent:10}   {case}: {what}")
        if result["worse_first_run"]:
            print(
                f"  worse in the first run: {', '.join(result['worse_first_run'])}; "
                f"{result['reruns']} rerun(s)"
            )
        if result["worse"]:
            failed = True
            print(f"  FAIL: {OURS} worse than {THEIRS} on {', '.join(result['worse'])}")
        elif result["cases"] == 0:
            failed = True
            print("  FAIL: no cases ran")
        else:
            print(f"  {OURS} is never worse than {THEIRS}")
    print(f"autobahn: summary in {args.out / 'summary.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
