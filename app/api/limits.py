"""Request body limits, enforced while the body streams in, before it is all read."""

import contextlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response
from app.config import Settings

UPLOAD_PATH = "/v1/files"
# Multipart framing (boundaries, part headers) on top of the file itself.
MULTIPART_OVERHEAD = 64 * 1024


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """413 as soon as a body passes its route's limit: by Content-Length, or while reading."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.upload_limit = settings.max_upload_bytes + MULTIPART_OVERHEAD
        self.default_limit = settings.max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload_limit if scope["path"] == UPLOAD_PATH else self.default_limit
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(scope, receive, send, limit)
            return
        seen = 0
        exceeded = False
        started = False

        async def counted_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                # The body parser may have turned our abort into its own 400; the truth is 413.
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, counted_receive, guarded_send)
        if exceeded and not started:
            await self._reject(scope, receive, send, limit)

    @staticmethod
    async def _reject(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = error_response(413, "payload_too_large",
                                  f"The request body is larger than {limit} bytes.")
        await response(scope, receive, send)
