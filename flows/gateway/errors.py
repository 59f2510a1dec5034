"""Errors in the OpenAI API's shape: `{"error": {"message", "type", "param", "code"}}` with the status
an OpenAI client expects (400 bad request, 401 bad key, 404, 413 too large, 504 timed out)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

STATUS_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error"}


class ApiError(Exception):
    """A refusal the client caused, or a search that could not finish, sent back in the API's shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = STATUS_TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def refused(error: ValidationError) -> ApiError:
    """A request body the models refuse: 400 naming every bad field (an unknown field included)."""
    problems = []
    for e in error.errors():
        where = ".".join(str(part) for part in e["loc"])
        said = "unknown field (not part of the API, nor one of ttc's strategy, budget, settings)"
        problems.append(f"{where}: {said if e['type'] == 'extra_forbidden' else e['msg']}")
    first = error.errors()[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    code = "unknown_parameter" if first["type"] == "extra_forbidden" else "invalid_value"
    return ApiError(400, "; ".join(problems), param=param, code=code)
