#!/usr/bin/env bash
# The fast tier on every other Python from 3.10 to 3.13 this machine has, and a
# `lowest` run: the oldest of those Pythons with the declared floors of the core
# dependencies (read from pyproject.toml) pinned.
#
# Each run has its own venv (.venv-3.10, ..., .venv-lowest), rebuilt only when
# pyproject.toml (or this script) changed since it was made. A Python that is
# not on the machine is skipped with a loud line, never silently.
#
#   bash scripts/python-matrix.sh                  # every Python found, and lowest
#   bash scripts/python-matrix.sh 3.10 lowest      # only these
#
# FAST_TIER (set by the Makefile) is the pytest -m expression of the fast tier.
set -euo pipefail
cd "$(dirname "$0")/.."

FAST_TIER=${FAST_TIER:-"not (redis or browser or matrix or autobahn or soak or slow or backplanes or serial)"}
DEFAULT_PYTHON=${DEFAULT_PYTHON:-.venv/bin/python}
# The floors the `lowest` run pins: every one must be a `name>=X` in pyproject.toml.
FLOOR_PACKAGES=(fastapi starlette httpx aiohttp redis uvicorn websockets)
# Dev requirements the fast tier does not use, left out of these venvs to keep them
# quick to build: linters (run once, on the default Python), the slow tiers' servers
# and browser, the benchmarks' plotting and their httpx-aiohttp comparison (which
# needs httpx>=0.28.1 or aiohttp>=3.10, above the library's own floors). hypercorn
# stays: the fast tier runs serve(server="hypercorn") on every Python.
NOT_FOR_FAST_TIER=(ruff mypy playwright granian daphne matplotlib httpx-aiohttp)

version_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
default_version=$(version_of "$DEFAULT_PYTHON" || version_of python3)

# A working interpreter for 3.X: pyenv's own builds first (its shims refuse
# versions that are not selected), then python3.X on PATH.
find_python() {
    local want=$1 candidate
    local candidates=()
    if command -v pyenv >/dev/null 2>&1; then
        local root
        root=$(pyenv root)
        while IFS= read -r candidate; do candidates+=("$candidate"); done < <(
            ls -d "$root"/versions/"$want"*/bin/python"$want" 2>/dev/null | sort -rV
        )
    fi
    if command -v "python$want" >/dev/null 2>&1; then
        candidates+=("$(command -v "python$want")")
    fi
    for candidate in "${candidates[@]}"; do
        if [ "$(version_of "$candidate")" = "$want" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# The package with its redis and docs extras, and the dev extra less NOT_FOR_FAST_TIER.
fast_tier_requirements() {
    "$DEFAULT_PYTHON" - "${NOT_FOR_FAST_TIER[@]}" <<'EOF'
import re, sys, tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("-e")
print(".[redis,docs]")
for requirement in project["optional-dependencies"]["dev"]:
    name = re.match(r"[A-Za-z0-9_.-]+", requirement)[0].lower()
    if name not in sys.argv[1:]:
        print(requirement)
EOF
}

# `name==floor` lines for FLOOR_PACKAGES, from pyproject.toml's dependencies and extras.
floor_constraints() {
    "$DEFAULT_PYTHON" - "${FLOOR_PACKAGES[@]}" <<'EOF'
import re, sys, tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
requirements = list(project["dependencies"])
for extra in project.get("optional-dependencies", {}).values():
    requirements += extra
floors = {}
for requirement in requirements:
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)", requirement.strip())
    if m:
        floors.setdefault(m[1].lower(), m[2])
for name in sys.argv[1:]:
    if name not in floors:
        sys.exit(f"python-matrix: no `{name}>=` floor in pyproject.toml")
    print(f"{name}=={floors[name]}")
EOF
}

# What a venv's contents depend on: the interpreter, the declared requirements
# (not the rest of pyproject.toml: tool settings need no new venv) and pip's
# arguments (a constraints file by its contents, not its temporary name).
requirements_stamp() {
    "$DEFAULT_PYTHON" - "$@" <<'EOF'
import hashlib, json, os, sys, tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
keys = ("requires-python", "dependencies", "optional-dependencies")
def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()

arguments = [digest(a) if os.path.isfile(a) else a for a in sys.argv[1:]]
state = [arguments, {key: project.get(key) for key in keys}]
print(hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16])
EOF
}

# pip's output without the noise of absent local index folders (pip's status survives: pipefail).
quiet() { grep -v '^WARNING: Location' || true; }

# Make (or reuse) venv $1 with interpreter $2; extra pip arguments (constraints) follow.
ensure_venv() {
    local venv=$1 python=$2
    shift 2
    local stamp
    stamp=$(requirements_stamp "$python" "$@" "${NOT_FOR_FAST_TIER[@]}")
    if [ -f "$venv/.matrix-installed" ] && [ "$(cat "$venv/.matrix-installed")" = "$stamp" ]; then
        # Reused: only point the editable install at this checkout (it may have moved).
        "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e . 2>&1 |
            quiet || return 1
        return 0
    fi
    echo "python-matrix: building $venv with $python (pyproject.toml changed or new)"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    local requirements=()
    while IFS= read -r line; do requirements+=("$line"); done < <(fast_tier_requirements)
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "${requirements[@]}" "$@" \
        2>&1 | quiet || return 1
    "$venv/bin/python" -m pip check >/dev/null || {
        "$venv/bin/python" -m pip check
        echo "python-matrix: $venv has broken requirements" >&2
        return 1
    }
    echo "$stamp" >"$venv/.matrix-installed"
}

run_fast_tier() {
    local name=$1 venv=$2
    echo "python-matrix: [$name] $("$venv/bin/python" -V), fast tier"
    "$venv/bin/python" -c 'import h3_fastapi' || return 1 # installs and imports cleanly
    # The docs site is built on the default Python only (`make docs`): on 3.10 pip
    # resolves mkdocstrings 1.0.6 with pymdown-extensions 12, which cannot build it.
    "$venv/bin/python" -m pytest -q -p no:cacheprovider -n 4 -m "$FAST_TIER" \
        --deselect tests/test_docs.py::test_mkdocs_build_strict_has_the_chinese_site
}

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(3.10 3.11 3.12 3.13 lowest)
fi

failed=()
passed=()
skipped=()
oldest=""
for version in 3.10 3.11 3.12 3.13; do
    if python=$(find_python "$version"); then
        [ -n "$oldest" ] || oldest=$python
    fi
done

for target in "${targets[@]}"; do
    if [ "$target" = lowest ]; then
        if [ -z "$oldest" ]; then
            echo "python-matrix: SKIPPED LOUDLY: lowest (no Python 3.10-3.13 found)" >&2
            skipped+=(lowest)
            continue
        fi
        venv=.venv-lowest
        constraints=$(mktemp)
        floor_constraints >"$constraints"
        echo "python-matrix: [lowest] floors: $(tr '\n' ' ' <"$constraints")"
        if ensure_venv "$venv" "$oldest" -c "$constraints" && run_fast_tier lowest "$venv"; then
            passed+=(lowest)
        else
            failed+=(lowest)
        fi
        rm -f "$constraints"
        continue
    fi
    if [ "$target" = "$default_version" ] && [ $# -eq 0 ]; then
        continue # the default Python runs the whole suite in `make pytest`
    fi
    if ! python=$(find_python "$target"); then
        echo "python-matrix: SKIPPED LOUDLY: Python $target is not on this machine" >&2
        skipped+=("$target")
        continue
    fi
    if ensure_venv ".venv-$target" "$python" && run_fast_tier "$target" ".venv-$target"; then
        passed+=("$target")
    else
        failed+=("$target")
    fi
done

echo "python-matrix: passed: ${passed[*]:-none}; failed: ${failed[*]:-none}; skipped: ${skipped[*]:-none}"
[ ${#failed[@]} -eq 0 ]
