"""Child processes for tests: started, drained, waited on, always reaped.

``ChildProcess(command)`` starts any command with stdout and stderr on one
pipe that a thread reads into ``Lines`` as they come, so a chatty child can
never block on a full pipe and a test can wait for a line (``wait_for``) or a
port (``wait_port``) with a timeout instead of sleeping. ``stop()`` sends
SIGTERM, then SIGKILL if the child is still there after its timeout, and
always reaps it. ``ChildServer`` is uvicorn serving one app on a given port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from tests.recorders import Lines

ROOT = Path(__file__).resolve().parent.parent
POLL_INTERVAL = 0.05  # between connection attempts while waiting for a port


def free_port() -> int:
    """A port nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ChildProcess:
    """A command in a child process whose output is read in a thread."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | str = ROOT,
        name: str | None = None,
    ) -> None:
        self.name = name or Path(command[0]).name
        self.output = Lines()
        self.killed = False  # stop() needed SIGKILL
        self.proc = subprocess.Popen(
            list(command),
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self._exited = threading.Event()  # the pipe closed: the child is gone
        self._reader = threading.Thread(target=self._drain, daemon=True, name=f"{self.name}-out")
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.output.append(line.rstrip("\n"))
        self.output.end()
        self._exited.set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    @property
    def text(self) -> str:
        """Everything the child printed so far, one line per line."""
        return "\n".join(self.output.snapshot())

    def send_signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL and reap (an abrupt crash, for outage tests)."""
        self.send_signal(signal.SIGKILL)
        self.wait(10)

    def wait_for(self, pattern: str, *, count: int = 1, timeout: float = 20) -> str:
        """Wait until ``count`` output lines match ``pattern``; all the output so far.

        Fails at once, with the output, if the child exits first.
        """
        try:
            self.output.wait_for(pattern, count=count, timeout=timeout)
        except AssertionError:
            state = "exited" if self._exited.is_set() else f"still running after {timeout}s"
            raise AssertionError(
                f"{self.name} ({state}): {count} line(s) matching {pattern!r} expected in:\n"
                f"{self.text}"
            ) from None
        return self.text

    def wait_port(
        self,
        port: int,
        timeout: float = 20,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        """Wait until ``port`` accepts connections (and ``ready()``, if given, is true)."""
        deadline = time.monotonic() + timeout
        while True:
            if self._exited.is_set() or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early ({self.proc.poll()}):\n{self.text}")
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    pass
                if ready is None or ready():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} did not listen on {port} in {timeout}s:\n{self.text}"
                )
            # Nothing to wait on but the child's exit: wake early if it dies.
            self._exited.wait(POLL_INTERVAL)

    def wait(self, timeout: float = 15) -> int:
        """Wait for the child to exit on its own and for its output to be read."""
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self, timeout: float = 10) -> float:
        """SIGTERM, then SIGKILL after ``timeout``; reaped either way. Seconds it took."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.proc.kill()
        self.proc.wait()
        self._reader.join(5)
        return time.monotonic() - started

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ChildServer(ChildProcess):
    """uvicorn serving ``target`` on 127.0.0.1:``port`` (signals, RSS, several workers)."""

    def __init__(
        self,
        target: str,
        port: int,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port
        command = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1"]
        command += ["--port", str(port), "--log-level", "warning", *args]
        super().__init__(command, env={"PYTHONPATH": str(ROOT), **(env or {})}, name=target)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 20) -> ChildServer:
        self.wait_port(self.port, timeout)
        return self
