import socket

import pytest

from tests import conftest


def test_non_loopback_connection_is_refused_and_fails_the_test() -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("203.0.113.7", 443), timeout=0.1)
    # The guard recorded it; clear it so this deliberate attempt does not fail this test.
    assert conftest._violations
    del conftest._violations[:]


def test_name_lookup_of_a_real_host_is_refused() -> None:
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("api.openai.com", 443)
    del conftest._violations[:]


def test_loopback_is_allowed() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    client = socket.create_connection(server.getsockname(), timeout=1)
    client.close()
    server.close()
