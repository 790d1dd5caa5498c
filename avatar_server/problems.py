"""RFC 9457 problem details: every HTTP error leaves the server as application/problem+json."""

from __future__ import annotations

import json
import logging
import secrets
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from model.errors import InputError

logger = logging.getLogger(__name__)

PROBLEM_TYPE = "application/problem+json"


class ProblemResponse(JSONResponse):
    """JSON rendered as ASCII: a detail quoting client text (even a lone surrogate) always encodes."""

    media_type = PROBLEM_TYPE

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class Problem(Exception):
    """An HTTP error with a problem body; raise it from any route."""

    def __init__(self, status: int, detail: str, *, code: str | None = None,
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code or HTTPStatus(status).phrase.lower().replace(" ", "_")
        self.headers = headers or {}
        self.extra = extra or {}


def problem_response(status: int, detail: str, code: str | None = None,
                     headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> JSONResponse:
    """The JSON problem body {"type", "title", "status", "detail"} (+ extension members) with its media type."""
    title = HTTPStatus(status).phrase
    code = code or title.lower().replace(" ", "_")
    body = {"type": f"urn:omnilive:problem:{code}", "title": title, "status": status, "detail": detail, **(extra or {})}
    return ProblemResponse(body, status_code=status, headers=headers)


def internal_problem(what: str, error: BaseException) -> Problem:
    """An error that is a bug, not the client's mistake: logged once with its traceback under a fresh request id,
    and the 500 problem that names the same id (body `request_id`, header `X-Request-ID`)."""
    request_id = secrets.token_hex(8)
    logger.error("%s failed: internal error (request id %s)", what, request_id, exc_info=error)
    return Problem(500, f"internal server error (request id {request_id})", code="internal_error",
                   headers={"X-Request-ID": request_id}, extra={"request_id": request_id})


def install_problem_handlers(app: FastAPI) -> None:
    """Map Problem, InputError, validation and HTTP errors (404/405 included) to problem bodies."""

    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.detail, exc.code, exc.headers, exc.extra)

    @app.exception_handler(InputError)
    async def _input(_: Request, exc: InputError) -> JSONResponse:
        return problem_response(422, str(exc), "invalid_input")

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for item in exc.errors():
            where = ".".join(str(p) for p in item.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {item.get('msg')}")
        return problem_response(422, "; ".join(parts) or "invalid request", "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        problem = internal_problem(f"{request.method} {request.url.path}", exc)
        return problem_response(problem.status, problem.detail, problem.code, problem.headers, problem.extra)
