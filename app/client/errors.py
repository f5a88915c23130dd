"""The errors a kbqa client raises: the server's own code and message, by HTTP status."""

from __future__ import annotations


class KbqaError(Exception):
    """Anything that went wrong talking to kbqa."""

    def __init__(self, message: str, code: str = "client_error") -> None:
        super().__init__(message)
        self.code, self.message = code, message


class ApiError(KbqaError):
    """The server answered with an error: `status`, its `code` and `message`, and its `request_id`."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(message, code)
        self.status, self.request_id = status, request_id

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


class BadRequest(ApiError):
    """400 or 422: the request was malformed or a field over its maximum."""


class Unauthorized(ApiError):
    """401: a valid API key is needed."""


class NotFound(ApiError):
    """404: no such knowledge base, document, job or model."""


class Conflict(ApiError):
    """409: exists already, busy being written, or finished."""


class TooLarge(ApiError):
    """413: a body, an upload or a file over its limit."""


class Unavailable(ApiError):
    """429 or 503 after the retries: too many jobs waiting, or the model busy."""


class StreamCut(KbqaError):
    """A streamed answer ended before its `done` event, or with an `error` event (its code and message)."""


class TransportError(KbqaError):
    """The server could not be reached, or the connection broke."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    422: BadRequest,
    429: Unavailable,
    503: Unavailable,
}


def api_error(status: int, body: object) -> ApiError:
    """Return the exception for an error response with JSON `body` (`{"error": {code, message}}`)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return _BY_STATUS.get(status, ApiError)(status, "http_error", f"HTTP {status}: {str(body)[:200]}")
    kind = _BY_STATUS.get(status, ApiError)
    return kind(
        status, str(error.get("code", "http_error")), str(error.get("message", "")), error.get("request_id")
    )
