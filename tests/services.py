"""Session fixtures for the real backplane servers of ``tests/backplane_servers.py``.

A missing binary skips loudly, and fails under ``CI=true`` (``need``). Each
fixture starts its service once for the whole run and always tears it down.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.backplane_servers import (
    PG_BIN,
    NatsService,
    PostgresService,
    RedisClusterService,
    RedisServer,
    missing_binaries,
    wait_until,
)
from tests.conftest import need

__all__ = [
    "PG_BIN",
    "NatsService",
    "PostgresService",
    "RedisClusterService",
    "RedisServer",
    "nats_service",
    "need_binaries",
    "postgres_service",
    "redis_cluster_service",
    "redis_service",
    "wait_until",
]


# ---------------------------------------------------------------- fixtures


def need_binaries(*binaries: str) -> None:
    """Skip loudly (fail under CI) unless every binary is installed."""
    for binary in missing_binaries(*binaries):
        need(False, f"{binary} is not installed")


@pytest.fixture(scope="session")
def redis_service() -> Iterator[RedisServer]:
    need_binaries("redis-server")
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="session")
def redis_cluster_service() -> Iterator[RedisClusterService]:
    need_binaries("redis-server", "redis-cli")
    service = RedisClusterService()
    try:
        yield service.start()
    finally:
        service.stop()


@pytest.fixture(scope="session")
def postgres_service() -> Iterator[PostgresService]:
    need_binaries("initdb", "pg_ctl")
    service = PostgresService()
    try:
        yield service.start()
    finally:
        service.remove()


@pytest.fixture(scope="session")
def nats_service() -> Iterator[NatsService]:
    need_binaries("nats-server")
    service = NatsService()
    try:
        yield service.start()
    finally:
        service.remove()
