"""Processes of a benchmark: servers pinned to one core, load generators to the other.

A server is started with ``taskset -c 0`` (uvicorn with the same settings for
every Python server, or ``node`` for the h3 anchors; the server matrix also
runs other uvicorn stacks, hypercorn and granian) and polled until it
accepts connections. A load generator (``bench/load/*.mjs``) runs with
``taskset -c 1`` and reports JSON lines; around its measured window the
harness samples the server's CPU time and both cores' busy time, so every
result says whether the server (and not the load) was the bottleneck.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
NODE_DIR = BENCH / "node"
LOAD_DIR = BENCH / "load"
RESULTS = BENCH / "results"

SERVER_CORE = 0
LOAD_CORE = 1

# The same uvicorn settings for every Python server (what ``auto`` picks when
# uvloop, httptools and websockets are installed, spelled out). uvicorn offers
# permessage-deflate by default; the load generators never negotiate it.
UVICORN_ARGS = (
    "--host",
    "127.0.0.1",
    "--loop",
    "uvloop",
    "--http",
    "httptools",
    "--ws",
    "websockets-sansio",
    "--log-level",
    "warning",
    "--no-access-log",
    "--backlog",
    "4096",
    "--timeout-graceful-shutdown",
    "2",
)


class BenchError(RuntimeError):
    """A benchmark step failed (server did not start, load generator errored)."""


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server: a Python ``module:app`` or a Node script in ``bench/node``.

    ``server`` picks the ASGI server of a Python target: ``uvicorn`` (the default,
    ``UVICORN_ARGS``; ``stack`` swaps its loop, HTTP parser and WebSocket
    implementation), ``hypercorn`` or ``granian`` (``stack``: the loop). Every
    server runs one worker, bound to 127.0.0.1 with the same backlog and no
    access log; ``args`` are appended as given.
    """

    kind: str  # "python" | "node"
    target: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    core: int = SERVER_CORE
    server: str = "uvicorn"  # "uvicorn" | "hypercorn" | "granian" (kind "python" only)
    stack: tuple[str, ...] = ()

    def command(self, port: int) -> list[str]:
        pin = ["taskset", "-c", str(self.core)]
        if self.kind == "python":
            build = SERVER_COMMANDS.get(self.server)
            if build is None:
                raise BenchError(f"unknown server {self.server!r}; one of {list(SERVER_COMMANDS)}")
            return [*pin, sys.executable, "-m", *build(self, port), *self.args]
        script = self.target if "/" in self.target else str(NODE_DIR / self.target)
        return [*pin, "node", script, str(port), *self.args]


def _uvicorn(spec: ServerSpec, port: int) -> list[str]:
    args = list(UVICORN_ARGS)
    if spec.stack:
        loop, http, ws = spec.stack
        for flag, value in (("--loop", loop), ("--http", http), ("--ws", ws)):
            args[args.index(flag) + 1] = value
    return ["uvicorn", spec.target, *args, "--port", str(port)]


def _hypercorn(spec: ServerSpec, port: int) -> list[str]:
    # One worker; asyncio unless ``stack`` says ("uvloop",). No access log by default.
    worker = spec.stack[0] if spec.stack else "asyncio"
    return ["hypercorn", spec.target, "--bind", f"127.0.0.1:{port}", "--workers", "1",
            "--worker-class", worker, "--backlog", "4096", "--log-level", "warning",
            "--graceful-timeout", "2"]  # fmt: skip


def _granian(spec: ServerSpec, port: int) -> list[str]:
    # One worker process, one Rust runtime thread, single-threaded runtime: the
    # whole server stays on the pinned core like the others.
    loop = spec.stack[0] if spec.stack else "uvloop"
    return ["granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--runtime-threads", "1", "--runtime-mode", "st",
            "--loop", loop, "--backlog", "4096", "--log-level", "warning",
            "--no-access-log", "--workers-kill-timeout", "2", spec.target]  # fmt: skip


SERVER_COMMANDS: dict[str, Callable[[ServerSpec, int], list[str]]] = {
    "uvicorn": _uvicorn,
    "hypercorn": _hypercorn,
    "granian": _granian,
}


def _raise_nofile() -> None:
    """Children may hold 10,000 sockets: lift the soft open-files limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def nofile_limit() -> int:
    """The open-files limit children get (the hard limit)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _status_kib(pid: int, key: str) -> int:
    """A ``VmRSS``/``VmHWM`` line of ``/proc/<pid>/status``, in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError(f"{key} not in /proc/{pid}/status")


@dataclass
class Server:
    """A started server process."""

    spec: ServerSpec
    port: int
    process: subprocess.Popen[bytes]
    log: Any
    ps: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self.ps = psutil.Process(self.process.pid)

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def processes(self) -> list[psutil.Process]:
        """The server process and its children (granian serves from a worker process)."""
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.NoSuchProcess:
            return [self.ps]

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server (all its threads and child processes)."""
        total = 0.0
        for process in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def worker_pid(self) -> int:
        """The process that runs the app: the last child if any (py-spy records it)."""
        return self.processes()[-1].pid

    def rss_kib(self) -> int:
        return _status_kib(self.pid, "VmRSS")

    def peak_rss_kib(self) -> int:
        """Peak resident set size since the process started (``VmHWM``)."""
        return _status_kib(self.pid, "VmHWM")

    def log_tail(self, lines: int = 20) -> str:
        self.log.flush()
        self.log.seek(0)
        text: str = self.log.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def _wait_listening(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            code = server.process.returncode
            raise BenchError(f"{server.spec.target} exited with {code}:\n{server.log_tail()}")
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{server.spec.target} did not listen within {timeout}s:\n{server.log_tail()}")


def _stop(process: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace``; worker processes left behind get SIGKILL too."""
    if process.poll() is not None:
        return
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
    _, alive = psutil.wait_procs(children, timeout=grace)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


@contextlib.contextmanager
def serve(spec: ServerSpec, *, env: dict[str, str] | None = None) -> Iterator[Server]:
    """Start ``spec`` on a free port, yield it once it listens, stop it afterwards."""
    port = free_port()
    log = tempfile.TemporaryFile()
    process_env = {**os.environ, **dict(spec.env), **(env or {})}
    # BENCH_H3_PATH (``--h3-path``) puts a patched copy of h3_fastapi first, to
    # measure a proposed change without touching the working tree.
    extra = os.environ.get("BENCH_H3_PATH", "")
    process_env["PYTHONPATH"] = os.pathsep.join(p for p in (extra, str(ROOT)) if p)
    process = subprocess.Popen(
        spec.command(port),
        # ``python -m`` puts the working directory first on sys.path.
        cwd=extra or ROOT,
        env=process_env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_raise_nofile,
    )
    server = Server(spec, port, process, log)
    try:
        _wait_listening(server, 30)
        yield server
    finally:
        _stop(process)
        log.close()


def _task_cpu_seconds(pid: int) -> float:
    """CPU seconds of every thread of ``pid``, from ``schedstat`` (nanoseconds, not ticks).

    A broker may use a few milliseconds in a window: the 10 ms ticks of
    ``cpu_times`` would round that to 0.
    """
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as stat:
                total += int(stat.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended in between
    return total / 1e9


def tree_cpu_seconds(pids: list[int]) -> float:
    """CPU seconds of these processes and their descendants (all threads).

    A process or thread that ended in between is left out of the sum.
    """
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            for process in (root, *root.children(recursive=True)):
                total += _task_cpu_seconds(process.pid)
    return total


def pin_tree(pids: list[int], core: int) -> None:
    """Pin every thread of these processes and their descendants to ``core``.

    For servers started without ``taskset`` (a broker): threads and children
    they start later inherit the affinity.
    """
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            for process in (root, *root.children(recursive=True)):
                with contextlib.suppress(psutil.Error, OSError):
                    for thread in process.threads():
                        with contextlib.suppress(OSError):
                            os.sched_setaffinity(thread.id, {core})


def prime(url: str, timeout: float = 30.0) -> None:
    """One GET before measuring, so lazily made clients and imports are ready."""
    import urllib.request

    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=timeout) as response:
        response.read()


def _core_busy(before: Any, after: Any) -> float:
    """Percent of the interval a core was busy (not idle/iowait)."""
    busy = 0.0
    total = 0.0
    for name in before._fields:
        delta = getattr(after, name) - getattr(before, name)
        total += delta
        if name not in ("idle", "iowait", "guest", "guest_nice"):
            busy += delta
    return 100.0 * busy / total if total > 0 else 0.0


@dataclass
class Profiler:
    """py-spy sampling the server during the measured window (diagnosis runs only)."""

    output: Path
    rate: int = 250
    process: subprocess.Popen[bytes] | None = None

    def start(self, pid: int) -> None:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.output.parent.mkdir(parents=True, exist_ok=True)
        command = ["taskset", "-c", str(LOAD_CORE), py_spy, "record", "--nonblocking"]
        command += ["--pid", str(pid), "--rate", str(self.rate), "--format", "speedscope"]
        command += ["--output", str(self.output), "--duration", "120"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT
        )

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def run_load(
    script: str,
    args: dict[str, Any],
    server: Server | None,
    *,
    timeout: float,
    on_event: Callable[[dict[str, Any], Any], None] | None = None,
    profiler: Profiler | None = None,
    meters: dict[str, Callable[[], float]] | None = None,
) -> dict[str, Any]:
    """Run ``bench/load/<script>`` pinned to the load core; return its result.

    Adds ``server_cpu_pct`` (server CPU over the window, percent of one core)
    and ``core0_busy_pct``/``core1_busy_pct`` (whole-core busy time, which
    shows other processes competing). ``on_event`` gets any other event line
    with the process's stdin (the idle workload uses it). ``meters`` are more
    CPU-seconds counters (several servers, a broker): each is read at both
    ends of the window and its difference added as ``<name>_cpu_s``, with the
    window's length as ``window_s``.
    """
    meters = meters or {}
    args = {**args, "timeout": timeout}
    command = ["taskset", "-c", str(LOAD_CORE), "node", str(LOAD_DIR / script), json.dumps(args)]
    stderr = tempfile.TemporaryFile()
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        preexec_fn=_raise_nofile,
    )
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout + 15
    buffer = b""
    result: dict[str, Any] | None = None
    error: str | None = None
    marks: dict[str, tuple[float, Any, float, dict[str, float]]] = {}
    try:
        while result is None and error is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                error = f"{script} gave no result within {timeout + 15:.0f}s"
                break
            if not selector.select(min(remaining, 1.0)):
                if process.poll() is not None:
                    break
                continue
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if not line.strip():
                    continue
                message = json.loads(line)
                event = message.get("event")
                if event in ("window_start", "window_end"):
                    cpu = server.cpu_seconds() if server else 0.0
                    read = {name: meter() for name, meter in meters.items()}
                    marks[event] = (time.monotonic(), psutil.cpu_times(percpu=True), cpu, read)
                    if profiler is not None and server is not None:
                        if event == "window_start":
                            profiler.start(server.worker_pid())
                        else:
                            profiler.stop()
                elif event is not None:
                    if on_event is not None:
                        on_event(message, process.stdin)
                elif "error" in message:
                    error = str(message["error"])
                    if "example" in message:
                        error += f" (e.g. {message['example']})"
                elif "result" in message:
                    result = message["result"]
    finally:
        selector.close()
        if profiler is not None:
            profiler.stop()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        stderr.seek(0)
        stderr_text = stderr.read().decode(errors="replace")
        stderr.close()
    if result is None:
        detail = error or f"{script} exited with {process.returncode} and no result"
        raise BenchError(f"{detail}\n{stderr_text[-2000:]}")
    if "window_start" in marks and "window_end" in marks:
        t0, cores0, cpu0, read0 = marks["window_start"]
        t1, cores1, cpu1, read1 = marks["window_end"]
        elapsed = t1 - t0
        if meters:
            result["window_s"] = elapsed
            for name in meters:
                result[f"{name}_cpu_s"] = read1[name] - read0[name]
        if server is not None and elapsed > 0:
            result["server_cpu_pct"] = 100.0 * (cpu1 - cpu0) / elapsed
        for core in (SERVER_CORE, LOAD_CORE):
            if core < len(cores0):
                result[f"core{core}_busy_pct"] = _core_busy(cores0[core], cores1[core])
    return result


def _run(command: list[str]) -> str:
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=20, check=False
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = ["h3-fastapi", "uvicorn", "starlette", "fastapi", "httpx", "httpcore"]
    names += ["sse-starlette", "websockets", "uvloop", "httptools", "aiohttp", "httpx-aiohttp"]
    found: dict[str, str] = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    for name in ("h3", "crossws", "srvx", "ws"):
        package = NODE_DIR / "node_modules" / name / "package.json"
        if package.exists():
            found[f"npm:{name}"] = json.loads(package.read_text())["version"]
    return found


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on, and how busy the machine was."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": _run(["node", "--version"]),
        "versions": _versions(),
        "git_commit": _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "h3_commit": _run(["git", "-C", str(ROOT), "log", "-1", "--format=%h", "--", "h3_fastapi"]),
        "git_dirty": bool(_run(["git", "-C", str(ROOT), "status", "--porcelain", "h3_fastapi"])),
        # The committed tree of h3_fastapi plus any uncommitted change to it.
        "h3_tree": _run(["git", "-C", str(ROOT), "rev-parse", "HEAD:h3_fastapi"])
        + _run(["git", "-C", str(ROOT), "diff", "--stat", "HEAD", "--", "h3_fastapi"]),
        "server_core": SERVER_CORE,
        "load_core": LOAD_CORE,
        "backplanes_placement": (
            f"4 uvicorn servers and the broker (all its processes and threads) on core"
            f" {SERVER_CORE}, the load generator on core {LOAD_CORE}"
        ),
        "uvicorn_args": list(UVICORN_ARGS),
        "nofile_limit": nofile_limit(),
    }


def load_snapshot() -> dict[str, Any]:
    """``uptime`` and the load averages right now."""
    return {
        "uptime": _run(["uptime"]),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def ensure_node() -> None:
    """The load generators need ``node`` and ``bench/node/node_modules`` (``npm ci``)."""
    if shutil.which("node") is None:
        raise BenchError(
            "node (>= 18) is needed for the load generators and the h3 anchors: "
            "install it (apt-get install nodejs npm) and run again"
        )
    if not (NODE_DIR / "node_modules" / "ws").exists():
        print("bench: installing bench/node packages (npm ci)", flush=True)
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            check=True,
            timeout=300,
        )
