"""Autobahn|Testsuite: our echo is never worse than raw Starlette's, case by case.

Runs ``scripts/autobahn.sh`` (wstest fuzzing client, Python 2.7) against
``tests/apps/autobahn_app.py`` on uvicorn with websockets-sansio, wsproto,
websockets and h3-fastapi's own protocol (``h3_fastapi.uvicorn_protocol``).
The comparison logic is checked on its own first, so a broken comparison
cannot make the suite pass.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import ROOT, need

pytestmark = pytest.mark.autobahn
SCRIPT = ROOT / "scripts" / "autobahn.sh"


def _compare() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "autobahn_compare", ROOT / "scripts" / "autobahn_compare.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _python2() -> str | None:
    pyenv = Path.home() / ".pyenv" / "versions" / "2.7.18" / "bin" / "python"
    if os.environ.get("PYTHON2"):
        return os.environ["PYTHON2"]
    if pyenv.exists():
        return str(pyenv)
    return shutil.which("python2.7")


def _result(behavior: str, close: str = "OK") -> dict[str, str]:
    return {"behavior": behavior, "behaviorClose": close}


def test_comparison_flags_a_case_where_ours_is_worse() -> None:
    compare = _compare()
    ranks: dict[str, dict[str, tuple[int, int]]] = {}
    compare.merge(
        ranks,
        {
            "h3": {
                "1.1.1": _result("OK"),
                "4.1.5": _result("NON-STRICT"),
                "7.1.5": _result("FAILED", "WRONG CODE"),
                "7.1.6": _result("OK", "UNCLEAN"),
            },
            "starlette": {
                "1.1.1": _result("OK"),
                "4.1.5": _result("OK"),
                "7.1.5": _result("FAILED", "WRONG CODE"),
                "7.1.6": _result("OK"),
                "10.1.1": _result("OK"),
            },
        },
    )
    # The server's own failure (7.1.5 on both) is not ours; a missing case is.
    assert compare.worse_cases(ranks) == ["4.1.5", "7.1.6", "10.1.1"]
    # A rerun where ours reaches the same result clears a race-dependent case.
    compare.merge(ranks, {"h3": {"4.1.5": _result("OK")}, "starlette": {}})
    assert compare.worse_cases(ranks) == ["7.1.6", "10.1.1"]


@pytest.mark.timeout(320)  # the first run also installs the suite (~50 s)
def test_autobahn_h3_never_worse_than_starlette(tmp_path: Path) -> None:
    python2 = _python2()
    need(python2 is not None, "python2.7 is needed for the Autobahn|Testsuite (wstest)")
    assert python2 is not None
    out = tmp_path / "autobahn"
    env = {**os.environ, "PYTHON2": python2, "AUTOBAHN_OUT": str(out)}
    proc = subprocess.run(
        ["bash", str(SCRIPT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(proc.stdout[-6000:])
    if proc.returncode != 0:
        pytest.fail(f"autobahn.sh exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    summary = json.loads((out / "summary.json").read_text())
    # "h3": h3_fastapi.uvicorn_protocol, the short frame path on uvicorn's protocol.
    assert set(summary) == {"websockets-sansio", "wsproto", "websockets", "h3"}
    for ws, result in summary.items():
        assert result["cases"] >= 240, (ws, result["cases"])
        assert result["worse"] == [], (ws, result["worse"])
        # The echo really echoes: nearly every case is OK for us too.
        ok = result["counts"]["h3"].get("OK/OK", 0)
        assert ok >= 220, (ws, result["counts"]["h3"])
