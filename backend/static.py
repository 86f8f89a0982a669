"""Serve the built dashboard at ``/``, with ``index.html`` for client-side routes.

Litestar's static router answers an unknown path with 404, which would break a
reload on ``/agents/research-bot``. Here a GET for a path that is not a file gets
``index.html`` instead, unless it belongs to the API (``/v1/...``, ``/schema``),
which keeps answering 404 as JSON. Hashed assets are cached for a year; ``index.html``
is never cached, so a new build shows up on the next load.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

from litestar import Request, Response, get
from litestar.exceptions import NotFoundException
from litestar.handlers import HTTPRouteHandler
from litestar.response import File

__all__ = ["dashboard_routes"]

_API_PREFIXES = ("v1/", "v1", "schema")


def dashboard_routes(static_dir: Path) -> list[HTTPRouteHandler]:
    index = static_dir / "index.html"

    def _index() -> Response[bytes]:
        return Response(
            index.read_bytes(),
            media_type="text/html",
            headers={"Cache-Control": "no-cache"},
        )

    @get(["/", "/{path:path}"], include_in_schema=False, sync_to_thread=False)
    def dashboard(request: Request[Any, Any, Any]) -> Any:
        relative = str(request.path_params.get("path", "")).lstrip("/")
        if relative == "" or relative == "index.html":
            return _index()
        if relative.split("/", 1)[0] in _API_PREFIXES or relative.startswith(_API_PREFIXES[:1]):
            raise NotFoundException()
        candidate = (static_dir / relative).resolve()
        if candidate.is_relative_to(static_dir) and candidate.is_file():
            cache = (
                "public, max-age=31536000, immutable"
                if relative.startswith("assets/")
                else "no-cache"
            )
            media_type, _ = mimetypes.guess_type(candidate.name)
            return File(
                candidate,
                media_type=media_type or "application/octet-stream",
                headers={"Cache-Control": cache},
                content_disposition_type="inline",
            )
        if relative.startswith("assets/") or "." in relative.rsplit("/", 1)[-1]:
            raise NotFoundException()  # a missing file, not a page
        return _index()

    return [dashboard]
