"""The one error shape every non-2xx answer has: ``{"error": {"code", "message", "field"}}``."""

from __future__ import annotations

from aiohttp import web

from service.requests.jsonutil import dumps


class ApiError(Exception):
    """An answer for the client: its status, a stable code, what to fix, and which field."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}

    def response(self) -> web.Response:
        return web.Response(status=self.status, body=dumps(self.body()),
                            content_type="application/json", headers=self.headers)
