"""The dashboard's live feed ends when the session that opened it no longer would be let in."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.backend.conftest import Account, auth_post, stream_until_closed


@contextmanager
def _live(account: Account, token: str) -> Iterator[threading.Thread]:
    """The live feed, read until the server closes it (see ``stream_until_closed``)."""
    with stream_until_closed(account, token, "/v1/live") as (thread, lines):
        assert lines[0] == "status 200"
        yield thread


def _change_password(account: Account, token: str) -> None:
    with httpx.Client(
        base_url=account.base_url, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        # An auth path: wait out the per-address limit that the suite's sign-ins use up.
        answer = auth_post(
            client,
            "/v1/auth/password",
            {"current_password": account.password, "new_password": "another long password"},
        )
        assert answer.status_code == 200, answer.text


def _log_out(account: Account, token: str) -> None:
    with httpx.Client(
        base_url=account.base_url, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        assert client.post("/v1/auth/logout").status_code == 200


@pytest.mark.parametrize("end", [_change_password, _log_out], ids=["password", "logout"])
def test_live_feed_closes_when_the_session_ends(
    account: Account, end: Callable[[Account, str], None]
) -> None:
    with _live(account, account.token) as thread:
        end(account, account.token)
        thread.join(timeout=5)
        assert not thread.is_alive(), "the live feed outlived its session"


def test_live_feed_of_another_session_goes_on_after_a_log_out(account: Account) -> None:
    with httpx.Client(base_url=account.base_url) as anon:
        other = auth_post(
            anon, "/v1/auth/login", {"email": account.email, "password": account.password}
        ).json()["access_token"]
    with _live(account, account.token) as thread:
        _log_out(account, other)
        time.sleep(2.5)
        assert thread.is_alive()
        _log_out(account, account.token)
        thread.join(timeout=5)
        assert not thread.is_alive()
