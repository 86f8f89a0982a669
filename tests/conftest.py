"""Test-wide guards: no test may reach the network.

Any socket connection or name lookup for a non-loopback address is refused and recorded;
the test during which it happened fails, even if the library that tried swallowed the error.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

_violations: list[str] = []
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


def _is_loopback(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if not isinstance(host, str):
        return False
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _check(address: Any) -> None:
    if isinstance(address, tuple) and address and not _is_loopback(address[0]):
        message = f"test tried to reach the network: {address[0]!r}"
        _violations.append(message)
        raise ConnectionRefusedError(message)


def _connect(self: socket.socket, address: Any) -> None:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _check(address)
    return _real_connect(self, address)


def _connect_ex(self: socket.socket, address: Any) -> int:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _check(address)
    return _real_connect_ex(self, address)


def _is_ip_literal(host: Any) -> bool:
    try:
        ipaddress.ip_address(host.decode() if isinstance(host, bytes) else host)
    except ValueError:
        return False
    return True


def _getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    # An IP literal needs no lookup (connect() checks it); any other name would ask DNS.
    if host is not None and not _is_loopback(host) and not _is_ip_literal(host):
        message = f"test tried to resolve a network name: {host!r}"
        _violations.append(message)
        raise socket.gaierror(socket.EAI_NONAME, message)
    return _real_getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _connect  # type: ignore[method-assign]
socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign]
socket.getaddrinfo = _getaddrinfo


@pytest.fixture(autouse=True)
def _no_network() -> Iterator[None]:
    del _violations[:]
    yield
    if _violations:
        found = list(_violations)
        del _violations[:]
        pytest.fail("non-loopback network access: " + "; ".join(found))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def service_unavailable(name: str, reason: str) -> None:
    """Skip a test whose service is down, visibly, except in CI where that is a failure."""
    if os.environ.get("CI"):
        pytest.fail(f"{name} is required in CI but unavailable: {reason}")
    pytest.skip(f"{name} unavailable: {reason}")
