"""Request-body limits, enforced while the body streams in: nothing over a limit is read into memory or
spooled to disk first."""

from __future__ import annotations

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.server import errors

MIB = 1024 * 1024


class BodyTooLarge(HTTPException):
    """A request body, or one file of an upload, over its limit (413)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(413, message)
        self.code = code


class BodyLimit:
    """Refuses (413) a request whose body is over its limit: by its declared length before any of it is read,
    else as soon as the bytes received pass the limit, and, for an upload, as soon as one file passes the
    per-file limit (the multipart stream is followed as it arrives), so a huge upload is never spooled whole.

    JSON routes get `max_body` bytes; uploads (`POST …/documents`) every file at `max_file` plus form overhead.
    """

    def __init__(self, app: ASGIApp, max_body: int, max_file: int, max_files: int) -> None:
        self.app = app
        self.max_body = max_body
        self.max_file = max_file
        self.max_upload = max_file * max_files + MIB

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        upload = scope["method"] == "POST" and scope["path"].endswith("/documents")
        limit = self.max_upload if upload else self.max_body
        length = headers.get(b"content-length", b"0")
        if length.isdigit() and int(length) > limit:
            body = errors.error_body(*_too_large(limit, upload))
            await JSONResponse(body, status_code=413, headers=_CLOSE)(scope, receive, send)
            return
        files = _FileSizes(headers.get(b"content-type", b""), self.max_file) if upload else None
        received, refused = 0, False

        async def limited() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                try:
                    if received > limit:
                        raise BodyTooLarge(*_too_large(limit, upload))
                    if files is not None:
                        files.feed(chunk)
                except BodyTooLarge:
                    refused = True
                    raise
            return message

        async def closing(message: Message) -> None:
            if refused and message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_CLOSE_RAW]
            await send(message)

        await self.app(scope, limited, closing)


# The rest of a refused body is not read: the connection is closed once the 413 is sent.
_CLOSE = {"connection": "close"}
_CLOSE_RAW = [(b"connection", b"close")]


def _too_large(limit: int, upload: bool) -> tuple[str, str]:
    """Return the error code and message of a body over `limit`."""
    if upload:
        return "upload_too_large", f"the upload is larger than {limit} bytes"
    return "body_too_large", f"the request body is larger than {limit} bytes"


class _FileSizes:
    """Follows a multipart body as it arrives and raises BodyTooLarge when one part passes `max_file` bytes."""

    def __init__(self, content_type: bytes, max_file: int) -> None:
        self.max_file = max_file
        self.size = 0
        self.disposition = b""
        self._header = b""
        _, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        callbacks = {
            "on_part_begin": self._begin,
            "on_part_data": self._data,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
        }
        # Not multipart, or no boundary: the form parser refuses it itself.
        self._parser = MultipartParser(boundary, callbacks) if boundary else None  # type: ignore[arg-type]

    def feed(self, chunk: bytes) -> None:
        """Follow `chunk`; raise BodyTooLarge when the part at hand is over the limit."""
        if self._parser is None:
            return
        try:
            self._parser.write(chunk)
        except BodyTooLarge:
            raise
        except Exception:  # malformed multipart: the form parser reports it; stop following
            self._parser = None

    def _begin(self) -> None:
        self.size, self.disposition, self._header = 0, b"", b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end].lower()

    def _header_end(self) -> None:
        self._header = b""

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        if self._header == b"content-disposition":
            self.disposition += data[start:end]

    def _data(self, data: bytes, start: int, end: int) -> None:
        self.size += end - start
        if self.size > self.max_file:
            _, options = parse_options_header(self.disposition)
            name = options.get(b"filename", b"a file").decode("utf-8", "replace")
            raise BodyTooLarge("file_too_large", f"'{name}' is larger than {self.max_file / MIB:g} MiB")
