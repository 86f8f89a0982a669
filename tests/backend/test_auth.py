"""Register, log in, me, log out, the session cookie with CSRF, password change, invites."""

from __future__ import annotations

import uuid

import httpx

from tests.backend.conftest import Account, LiveServer, register


def test_register_login_me(server: LiveServer) -> None:
    acc = register(server.url, org="Acme")
    with acc.client:
        me = acc.client.get("/v1/auth/me")
    assert me.status_code == 200
    body = me.json()
    assert body["user"]["email"] == acc.email
    assert body["organization"] == {"id": acc.org_id, "name": "Acme"}
    assert body["role"] == "owner"
    assert "password" not in me.text and "hash" not in me.text


def test_register_twice_is_a_conflict(account: Account) -> None:
    with httpx.Client(base_url=account.base_url) as anon:
        again = anon.post(
            "/v1/auth/register",
            json={"email": account.email, "password": "another password", "organization": "x"},
        )
    assert again.status_code == 409


def test_wrong_password_and_unknown_user_are_401(account: Account) -> None:
    with httpx.Client(base_url=account.base_url) as anon:
        wrong = anon.post("/v1/auth/login", json={"email": account.email, "password": "nope-nope"})
        unknown = anon.post(
            "/v1/auth/login", json={"email": "nobody@example.com", "password": "whatever1"}
        )
    assert wrong.status_code == 401
    assert unknown.status_code == 401


def test_no_token_or_bad_token_is_401(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url) as anon:
        assert anon.get("/v1/auth/me").status_code == 401
        bad = anon.get("/v1/auth/me", headers={"Authorization": "Bearer not.a.jwt"})
        assert bad.status_code == 401


def test_cookie_session_needs_csrf_for_unsafe_requests(account: Account) -> None:
    with httpx.Client(base_url=account.base_url) as browser:
        login = browser.post(
            "/v1/auth/login", json={"email": account.email, "password": account.password}
        )
        assert login.status_code == 200
        set_cookie = login.headers.get_list("set-cookie")
        session = next(c for c in set_cookie if c.startswith("kavach_session="))
        assert "HttpOnly" in session
        csrf = browser.cookies["kavach_csrf"]
        assert csrf == login.json()["csrf_token"]

        # Reads work on the cookie alone.
        assert browser.get("/v1/auth/me").status_code == 200
        # A write without the header is refused, with a wrong header too.
        assert browser.post("/v1/keys", json={"name": "k"}).status_code == 403
        wrong = browser.post("/v1/keys", json={"name": "k"}, headers={"X-CSRF-Token": "forged"})
        assert wrong.status_code == 403
        ok = browser.post("/v1/keys", json={"name": "k"}, headers={"X-CSRF-Token": csrf})
        assert ok.status_code == 201

        out = browser.post("/v1/auth/logout")
        assert out.status_code == 200
        assert "kavach_session" not in browser.cookies
        assert browser.get("/v1/auth/me").status_code == 401


def test_password_change_revokes_old_tokens(account: Account) -> None:
    changed = account.client.post(
        "/v1/auth/password",
        json={"current_password": account.password, "new_password": "a brand new password"},
    )
    assert changed.status_code == 200, changed.text
    new_token = changed.json()["access_token"]
    assert account.client.get("/v1/auth/me").status_code == 401  # the old token
    with httpx.Client(
        base_url=account.base_url, headers={"Authorization": f"Bearer {new_token}"}
    ) as fresh:
        assert fresh.get("/v1/auth/me").status_code == 200
        login_old = fresh.post(
            "/v1/auth/login", json={"email": account.email, "password": account.password}
        )
        assert login_old.status_code == 401


def test_password_change_needs_the_current_password(account: Account) -> None:
    response = account.client.post(
        "/v1/auth/password",
        json={"current_password": "not the password", "new_password": "whatever whatever"},
    )
    assert response.status_code == 403


def test_invite_member_with_one_time_password_and_roles(account: Account) -> None:
    email = f"viewer-{uuid.uuid4().hex[:8]}@example.com"
    invited = account.client.post("/v1/orgs/members", json={"email": email, "role": "viewer"})
    assert invited.status_code == 201, invited.text
    otp = invited.json()["one_time_password"]
    members = account.client.get("/v1/orgs/members").json()
    assert {m["user"]["email"] for m in members} == {account.email, email}

    with httpx.Client(base_url=account.base_url) as anon:
        login = anon.post("/v1/auth/login", json={"email": email, "password": otp})
        assert login.status_code == 200
        assert login.json()["must_change_password"] is True
        assert login.json()["role"] == "viewer"
        token = login.json()["access_token"]
        viewer = {"Authorization": f"Bearer {token}"}
        # A viewer reads but cannot create keys, invite, or stop agents.
        assert anon.get("/v1/keys", headers=viewer).status_code == 200
        assert anon.post("/v1/keys", json={"name": "x"}, headers=viewer).status_code == 403
        invite = anon.post(
            "/v1/orgs/members", json={"email": "a@b.example", "role": "admin"}, headers=viewer
        )
        assert invite.status_code == 403

    again = account.client.post("/v1/orgs/members", json={"email": email, "role": "admin"})
    assert again.status_code == 409


def test_logout_ends_the_session_on_the_server(account: Account) -> None:
    with httpx.Client(base_url=account.base_url) as browser:
        login = browser.post(
            "/v1/auth/login", json={"email": account.email, "password": account.password}
        )
        assert login.status_code == 200
        cookie = browser.cookies["kavach_session"]
        assert login.json()["access_token"] == cookie
        assert browser.post("/v1/auth/logout").status_code == 200
    # A copy of the cookie taken before the log-out no longer opens the session.
    with httpx.Client(base_url=account.base_url, cookies={"kavach_session": cookie}) as stolen:
        assert stolen.get("/v1/auth/me").status_code == 401
    # Logging out with a bearer token ends that token.
    with httpx.Client(base_url=account.base_url) as anon:
        bearer = anon.post(
            "/v1/auth/login", json={"email": account.email, "password": account.password}
        ).json()["access_token"]
    with httpx.Client(
        base_url=account.base_url, headers={"Authorization": f"Bearer {bearer}"}
    ) as api:
        assert api.get("/v1/auth/me").status_code == 200
        assert api.post("/v1/auth/logout").status_code == 200
        assert api.post("/v1/auth/logout").status_code == 200  # twice is harmless
        assert api.get("/v1/auth/me").status_code == 401
    # Other sessions of the same user stay logged in.
    assert account.client.get("/v1/auth/me").status_code == 200


def test_login_with_an_organization_id_no_row_can_have_is_400(account: Account) -> None:
    with httpx.Client(base_url=account.base_url) as anon:
        for org_id in (2**31, 2**63, 0):
            answer = anon.post(
                "/v1/auth/login",
                json={
                    "email": account.email,
                    "password": account.password,
                    "organization_id": org_id,
                },
            )
            assert answer.status_code == 400, (org_id, answer.text)
            assert "organization_id" in answer.text
        largest = anon.post(
            "/v1/auth/login",
            json={
                "email": account.email,
                "password": account.password,
                "organization_id": 2**31 - 1,
            },
        )
        assert largest.status_code == 401  # a valid id the account is not a member of
