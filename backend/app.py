"""The Litestar app factory.

``create_app()`` reads :class:`~backend.settings.Settings` from the environment;
tests and ``kavach serve`` pass their own. Piccolo's engine is process-global, so
one process serves one app (one database) at a time.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from litestar import Litestar, Request, Response
from litestar.openapi import OpenAPIConfig
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from piccolo.engine.postgres import PostgresEngine

import kavach
from backend import db
from backend.control import ControlHub
from backend.ops import Operations
from backend.routes import auth, control, keys, live, reads
from backend.settings import Settings
from backend.static import dashboard_routes

__all__ = ["create_app"]

logger = logging.getLogger("agentkavach.backend")


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    # The traceback goes to the server log; the client learns only that it failed.
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return Response(
        {"status_code": 500, "detail": "internal server error"},
        status_code=HTTP_500_INTERNAL_SERVER_ERROR,
    )


def _static_dir(settings: Settings) -> Path | None:
    candidates = [Path(settings.static_dir)] if settings.static_dir else []
    candidates.append(Path(__file__).parent / "static")
    for candidate in candidates:
        if (candidate / "index.html").is_file():
            return candidate
    return None


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the backend app for ``settings`` (default: from the environment)."""
    settings = settings or Settings.from_env()
    engine = db.engine_for(settings.database)
    db.use_engine(engine)
    ops = Operations(settings)  # rate limits, billing, retention, alerts, metrics
    hub = ControlHub(settings.redis_url, ops.settings.redis_prefix)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        db.use_engine(engine)
        if settings.auto_migrate:
            await db.migrate(engine)
        if isinstance(engine, PostgresEngine):
            await engine.start_connection_pool(max_size=settings.pool_size)  # type: ignore[no-untyped-call]
        await hub.start()
        logger.info("AgentKavach backend on %s", settings.database.redacted())
        try:
            yield
        finally:
            await hub.stop()
            if isinstance(engine, PostgresEngine):
                await engine.close_connection_pool()  # type: ignore[no-untyped-call]

    route_handlers: list[Any] = [
        *auth.ROUTES,
        *keys.ROUTES,
        *control.ROUTES,
        *reads.ROUTES,
        *live.ROUTES,
        *ops.routes,
    ]
    static = _static_dir(settings)
    if static is not None:
        route_handlers.extend(dashboard_routes(static))

    app = Litestar(
        route_handlers=route_handlers,
        lifespan=[lifespan, ops.lifespan],
        before_request=ops.before_request,
        middleware=[ops.middleware],
        exception_handlers={HTTP_500_INTERNAL_SERVER_ERROR: _internal_error},
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="AgentKavach",
            version=kavach.__version__,
            path="/schema",
            description="Budget guard backend: ingest, control channel, dashboard APIs.",
        ),
        debug=False,
        # Logging is the host's to configure (``serve`` does); an app factory that
        # rewires the root logger would fight uvicorn and test harnesses.
        logging_config=None,
    )
    app.state.settings = settings
    app.state.hub = hub
    app.state.ops = ops
    return app
