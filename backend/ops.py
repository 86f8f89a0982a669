"""The operational parts of the backend, wired into the app in one place.

``Operations(settings)`` holds the limiter, admission checks, metrics, the retention job
and the alert worker; ``create_app`` adds its routes, its ``before_request`` hook, its
middleware and its lifespan.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Litestar, Request, Response

from backend.admission import Admission
from backend.alert_worker import AlertWorker
from backend.crypto import SecretBox
from backend.ingest import nests_deeper
from backend.metrics import Metrics, metrics_endpoint
from backend.ops_settings import OpsSettings
from backend.ratelimit import Limiter, MemoryLimiter, RedisLimiter
from backend.retention import Pruned, RetentionJob
from backend.settings import Settings

__all__ = ["Operations"]

_AUTH_PATHS = frozenset({"/v1/auth/login", "/v1/auth/register", "/v1/auth/password"})
# JSON bodies (ingest's aside, which checks its own) may nest this deep. Far deeper, the
# decoders raise RecursionError, which was a 500.
_MAX_BODY_NESTING = 64


def _nests_too_deeply(body: bytes) -> bool:
    if body.count(b"[") + body.count(b"{") <= _MAX_BODY_NESTING:
        return False  # the quick answer for every ordinary body
    try:
        return nests_deeper(msgspec.json.decode(body), _MAX_BODY_NESTING)
    except RecursionError:
        return True
    except msgspec.DecodeError:
        return False  # not JSON: the handler says so


class Operations:
    def __init__(self, settings: Settings, ops: OpsSettings | None = None) -> None:
        from backend.routes import billing, channels

        self.settings = ops or OpsSettings.from_env()
        self.core = settings
        self.limiter: Limiter = (
            RedisLimiter(settings.redis_url, self.settings.redis_prefix + "rl:")
            if settings.redis_url
            else MemoryLimiter()
        )
        self.admission = Admission(settings, self.settings, self.limiter)
        self.metrics = Metrics()
        self.box = SecretBox(self.settings.encryption_key)
        self.retention = RetentionJob(self.settings, self._pruned)
        self.worker = AlertWorker(self)
        self.routes: list[Any] = [*billing.ROUTES, *channels.ROUTES, metrics_endpoint]

    def _pruned(self, pruned: Pruned) -> None:
        self.metrics.inc("agentkavach_retention_deleted_total", pruned.events, table="events")
        self.metrics.inc(
            "agentkavach_retention_deleted_total", pruned.alert_events, table="alert_events"
        )

    async def before_request(self, request: Request[Any, Any, Any]) -> Response[Any] | None:
        path = request.url.path
        answer = None
        if (
            request.method in ("POST", "PUT", "PATCH")
            and path != "/v1/ingest"
            and _nests_too_deeply(await request.body())
        ):
            detail = (
                f"the JSON body nests more than {_MAX_BODY_NESTING} levels of arrays and objects"
            )
            return Response({"status_code": 400, "detail": detail}, status_code=400)
        if path == "/v1/ingest" and request.method == "POST":
            answer = await self.admission.check_ingest(request)
        elif path in _AUTH_PATHS and request.method == "POST":
            answer = await self.admission.check_auth(request)
        if answer is not None:
            reason = answer.content.get("reason", "") if isinstance(answer.content, dict) else ""
            self.metrics.inc("agentkavach_rate_limited_total", reason=reason)
        return answer

    def middleware(self, app: Any) -> Any:
        """After an ingest answers: count it, and have the alert worker look at the org."""

        async def wrapped(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http" or scope.get("path") != "/v1/ingest":
                await app(scope, receive, send)
                return
            status = 0

            async def capture(message: Any) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                await send(message)

            await app(scope, receive, capture)
            self.metrics.inc("agentkavach_ingest_requests_total", status=str(status))
            state = scope.get("state") or {}
            org = state.get("ingest_org")
            if status == 202 and org is not None:
                count = int(state.get("ingest_events", 0))
                self.metrics.inc("agentkavach_ingest_events_total", count)
                self.metrics.batch(count)
                self.worker.notify(int(org))

        return wrapped

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncIterator[None]:
        started = time.time()
        self.metrics.gauges["agentkavach_process_start_time_seconds"] = started
        self.metrics.gauges["agentkavach_alert_queue_depth"] = self.worker.queue_depth
        self.retention.start()
        await self.worker.start(app)
        try:
            yield
        finally:
            await self.worker.stop()
            await self.retention.stop()
            await self.limiter.close()
