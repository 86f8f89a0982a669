"""The backend's SDK endpoints, over one pooled httpx client."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from kavach import __version__
from kavach.errors import KavachConfigError


def check_api_key(api_key: str) -> None:
    """Raise KavachConfigError unless ``api_key`` looks like an AgentKavach SDK key."""
    if not api_key.startswith("ak_"):
        raise KavachConfigError(
            "api_key must be an AgentKavach SDK key (it starts with 'ak_live_' or "
            "'ak_test_'); create one in the dashboard or with `kavach keys create`"
        )


def check_endpoint(endpoint: str) -> None:
    """Raise KavachConfigError unless ``endpoint`` is an http(s) URL."""
    if not endpoint.startswith(("http://", "https://")):
        raise KavachConfigError(
            f"endpoint must be an http(s) URL such as https://kavach.example.com, got {endpoint!r}"
        )


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """Where the backend is and the SDK key to talk to it with (the key is never printed)."""

    api_key: str
    endpoint: str

    def __post_init__(self) -> None:
        check_api_key(self.api_key)
        check_endpoint(self.endpoint)

    def __repr__(self) -> str:
        return f"BackendConfig(api_key='{self.api_key[:12]}…', endpoint={self.endpoint!r})"


class BackendError(Exception):
    """A backend answer that is not a success. ``retry_after`` in seconds when it said so."""

    def __init__(
        self, status: int, message: str, retry_after: float | None = None, reason: str = ""
    ) -> None:
        super().__init__(f"backend answered {status}: {message}")
        self.status = status
        self.retry_after = retry_after
        self.reason = reason
        """The backend's machine-readable cause, e.g. ``burst`` or ``plan_events``."""


class BackendAPI:
    def __init__(self, config: BackendConfig, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        self._client = httpx.Client(
            base_url=config.endpoint.rstrip("/"),
            headers={
                "Authorization": f"Bearer {config.api_key}",
                "User-Agent": f"agentkavach-python/{__version__}",
            },
            timeout=httpx.Timeout(10.0, connect=3.0),
            transport=transport,
        )

    def ingest(self, events: list[dict[str, Any]], instance_id: str) -> dict[str, Any]:
        body = json.dumps(
            {"sdk": {"version": __version__, "instance_id": instance_id}, "events": events},
            separators=(",", ":"),
        ).encode()
        response = self._client.post(
            "/v1/ingest",
            content=gzip.compress(body, compresslevel=5),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
        return self._json(response)

    def spend(self, agent: str, timeout: float) -> dict[str, Any]:
        return self._json(self._client.get(f"/v1/agents/{agent}/spend", timeout=timeout))

    def control_lines(self, agents: list[str]) -> Iterator[str]:
        """Lines of the control stream (server-sent events) until it ends or fails."""
        with self._client.stream(
            "GET",
            "/v1/control/stream",
            params={"agents": ",".join(agents)},
            headers={"Accept": "text/event-stream"},
            timeout=httpx.Timeout(10.0, read=60.0),
        ) as response:
            if response.status_code >= 400:
                response.read()
                self._json(response)
            yield from response.iter_lines()

    def close(self) -> None:
        self._client.close()

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        if response.status_code < 300:
            data = response.json() if response.content else {}
            return data if isinstance(data, dict) else {"data": data}
        retry_after = None
        header = response.headers.get("retry-after")
        if header:
            try:
                retry_after = float(header)
            except ValueError:
                retry_after = None
        reason = ""
        try:
            body = response.json()
            detail = body.get("detail") or response.text
            reason = str(body.get("reason") or "")
        except (ValueError, AttributeError):
            detail = response.text
        raise BackendError(response.status_code, str(detail)[:500], retry_after, reason)
