"""Real backplane servers (Redis, Redis Cluster, PostgreSQL, NATS), with no pytest in sight.

The tests (``tests/services.py`` wraps them in session fixtures) and the
``backplanes`` benchmark (``bench/workloads.py``) start the same servers:

- ``RedisServer``: one ``redis-server`` without persistence (killable,
  restartable on its port).
- ``RedisClusterService``: six ``redis-server --cluster-enabled yes`` (three
  primaries, three replicas) joined by ``redis-cli --cluster create``.
- ``PostgresService``: a throwaway PostgreSQL (``initdb`` + ``pg_ctl``), as the
  ``postgres`` user when run as root (PostgreSQL refuses root).
- ``NatsService``: ``nats-server`` with JetStream in a temp dir.

Everything listens on 127.0.0.1, on free ports, in temp dirs. The servers
run as ``tests.processes.ChildProcess`` (output drained in a thread, kept for
error messages, always reaped); ``pg_ctl`` daemonizes PostgreSQL, whose log
goes to a file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.processes import ChildProcess, free_port

__all__ = [
    "PG_BIN",
    "NatsService",
    "PostgresService",
    "RedisClusterService",
    "RedisServer",
    "missing_binaries",
    "wait_until",
]

# Debian's postgresql package: the newest installed server version.
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), default=Path("/nonexistent"))


def wait_until(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """Poll ``check`` until it returns something truthy (a blocking wait, for fixtures)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            result = check()
            if result:
                return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def missing_binaries(*binaries: str) -> list[str]:
    """Those of ``binaries`` that are not installed (PostgreSQL's are looked for in ``PG_BIN``)."""
    return [b for b in binaries if not (shutil.which(b) or (PG_BIN / b).exists())]


# ---------------------------------------------------------------- Redis


class RedisServer:
    """A throwaway ``redis-server`` (no persistence) that can be killed and restarted."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: ChildProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        command = ["redis-server", "--save", "", "--appendonly", "no"]
        command += ["--port", str(self.port), "--bind", "127.0.0.1"]
        self.proc = ChildProcess(command, name="redis-server")
        self.proc.wait_port(self.port, timeout=10, ready=self._pong)
        return self

    def _pong(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def command(self, *args: str) -> Any:
        """Run one command with a fresh plain client (not the code under test)."""
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            return client.execute_command(*args)
        finally:
            client.close()


# ---------------------------------------------------------------- Redis Cluster


class RedisClusterService:
    """A 3-primary, 3-replica Redis Cluster; a primary can be killed for failover."""

    def __init__(self, node_timeout_ms: int = 500) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="h3-redis-cluster-"))
        self.ports = [free_port() for _ in range(6)]
        # The cluster bus port defaults to port + 10000, which may be taken or
        # out of range: give each node its own free one.
        self.bus_ports = {port: free_port() for port in self.ports}
        self.node_timeout_ms = node_timeout_ms
        self.procs: dict[int, ChildProcess] = {}

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:3])

    def start(self) -> RedisClusterService:
        for port in self.ports:
            self._start_node(port)
        for port in self.ports:
            wait_until(lambda port=port: self._pong(port), "redis nodes")
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        options = ["--cluster-replicas", "1", "--cluster-yes"]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *nodes, *options],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            timeout=60,
        )
        wait_until(self._healthy, "cluster_state:ok with 3 primaries and 3 replicas", 60)
        return self

    def _start_node(self, port: int) -> None:
        node_dir = self.dir / str(port)
        node_dir.mkdir(exist_ok=True)
        command = [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1",
            "--cluster-port", str(self.bus_ports[port]),
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--save", "", "--appendonly", "no", "--dir", str(node_dir),
            # Replicas sync at once (not after 5 s): one that never synced
            # cannot take over from its primary.
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        self.procs[port] = ChildProcess(command, name=f"redis-server:{port}")

    def _pong(self, port: int) -> bool:
        if not self.alive(port):
            output = self.procs[port].text[-500:]
            raise RuntimeError(f"redis-server on {port} exited:\n{output}")
        return self.command(port, "PING") == "PONG"

    def command(self, port: int, *args: str) -> str:
        """One command to one node with ``redis-cli`` (not the code under test)."""
        out = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True,
            timeout=10,
            check=True,
        )
        return out.stdout.decode().strip()

    def nodes(self, port: int | None = None) -> list[dict[str, Any]]:
        """``CLUSTER NODES`` as seen by a live node: port, id, role, slot ranges."""
        alive = port or next(p for p in self.ports if self.alive(p))
        found = []
        for line in self.command(alive, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            flags = fields[2].split(",")
            found.append(
                {
                    "id": fields[0],
                    "port": int(fields[1].split("@")[0].rsplit(":", 1)[1]),
                    "primary": "master" in flags,
                    "failed": "fail" in flags or "fail?" in flags,
                    "slots": fields[8:],
                }
            )
        return found

    def primaries(self) -> list[int]:
        return sorted(n["port"] for n in self.nodes() if n["primary"] and not n["failed"])

    def owner(self, key: str) -> int:
        """The port of the primary that owns ``key``'s slot now."""
        alive = next(p for p in self.ports if self.alive(p))
        slot = int(self.command(alive, "CLUSTER", "KEYSLOT", key))
        for node in self.nodes(alive):
            if not node["primary"] or node["failed"]:
                continue
            for part in node["slots"]:
                low, _, high = part.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return int(node["port"])
        raise LookupError(f"no primary owns slot {slot}")

    def alive(self, port: int) -> bool:
        proc = self.procs.get(port)
        return proc is not None and proc.returncode is None

    def kill(self, port: int) -> None:
        proc = self.procs.get(port)
        if proc is not None:
            proc.kill()

    def restart(self, port: int) -> None:
        """Bring a killed node back (it rejoins as a replica of its successor)."""
        self._start_node(port)
        wait_until(lambda: self._pong(port), "the node back")
        wait_until(self._healthy, "the node rejoined", 60)

    def _healthy(self) -> bool:
        for port in self.ports:
            if "cluster_state:ok" not in self.command(port, "CLUSTER", "INFO"):
                return False
        nodes = self.nodes()
        live = [n for n in nodes if not n["failed"]]
        if len(live) != 6 or sum(n["primary"] for n in live) != 3:
            return False
        replicas = [n["port"] for n in live if not n["primary"]]
        return all(
            "master_link_status:up" in self.command(p, "INFO", "replication") for p in replicas
        )

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- PostgreSQL


class PostgresService:
    """A throwaway PostgreSQL 15 with trust auth on 127.0.0.1."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="h3-postgres-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_root = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_root else []
        subprocess.run(
            [*prefix, *command],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            timeout=120,
        )

    def start(self) -> PostgresService:
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        if not self.data.exists():
            self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust")
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"),
            "-o", options, "-w", "start",
        )  # fmt: skip
        return self

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- NATS


class NatsService:
    """``nats-server`` with JetStream, its store in a temp dir."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="h3-nats-"))
        self.port = free_port()
        self.proc: ChildProcess | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsService:
        command = ["nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-js"]
        self.proc = ChildProcess([*command, "-sd", str(self.dir)], name="nats-server")
        self.proc.wait_port(self.port, timeout=30)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
