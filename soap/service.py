"""A SOAP 1.2 endpoint as an ASGI application: read, check, dispatch on wsa:Action, answer.

The reply has the request's form: MTOM in, MTOM out; plain SOAP in, plain SOAP out. Faults
carry the SOAP 1.2 code, the WS-Addressing fault action and the HTTP status of the SOAP HTTP
binding; an unexpected error in a handler is a Receiver fault without any internal detail.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

from lxml import etree
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from soap.envelope import SoapEnvelope, build_envelope, parse_envelope
from soap.faults import SoapFault
from soap.mtom import (
    Attachment,
    IncomingMessage,
    OutgoingPart,
    document_content,
    inline_response,
    mtom_response,
    read_message,
)
from soap.xml import SOAP12_ENV, WSA

log = logging.getLogger(__name__)

# A client that stops sending in the middle of a body is given up on after this long.
BODY_READ_TIMEOUT = 60.0


@dataclass
class SoapRequest:
    """A checked request as a handler sees it.

    Its attachments (and the spools ``content`` makes for inline base64) are deleted once the
    reply has been sent. A handler that keeps a document moves the file away first (for
    example with the blob store's commit); the clean-up tolerates the missing file.
    """

    envelope: SoapEnvelope
    message: IncomingMessage
    spool_factory: Callable

    def content(self, element: etree._Element) -> Attachment:
        """The bytes of a base64Binary element (attachment or inline base64), spooled."""
        return document_content(element, self.message, self.spool_factory)


@dataclass
class SoapReply:
    """A handler's answer: the service adds wsa:Action, a MessageID and RelatesTo, and sends
    it in the request's form (MTOM with ``parts`` as attachments, or plain SOAP with them
    inlined as base64)."""

    action: str
    body: etree._Element
    parts: list[OutgoingPart] = field(default_factory=list)
    http_status: int = 200


Handler = Callable[[SoapRequest], Awaitable[SoapReply]]


class SoapService:
    """One SOAP 1.2 endpoint, an ASGI application (a Starlette Route or Mount endpoint).

    ``handlers`` maps each request wsa:Action to its handler; ``understood`` names (Clark
    notation) the non-WS-Addressing header blocks the handlers process, so that they may carry
    mustUnderstand; ``wsdl_path`` is served on GET ?wsdl; a request whose Content-Length, or
    whose bytes as they arrive, exceed ``max_request_bytes`` gets a 413 Sender fault.
    """

    def __init__(
        self,
        handlers: dict[str, Handler],
        spool_factory: Callable,
        wsdl_path: Path | None = None,
        understood: frozenset[str] | set[str] = frozenset(),
        max_request_bytes: int | None = None,
    ):
        self.handlers = handlers
        self.spool_factory = spool_factory
        self.wsdl_path = wsdl_path
        self.understood = frozenset(understood)
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":  # served on its own, not mounted in a Starlette app
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise RuntimeError(f"a SOAP endpoint serves HTTP only, not {scope['type']}")
        request = Request(scope, receive)
        if request.method == "GET":
            await self._wsdl(request)(scope, receive, send)
            return
        if request.method != "POST":
            await Response(status_code=405, headers={"Allow": "GET, POST"})(scope, receive, send)
            return

        exchange = _Exchange()
        try:
            response = await self._post(request, exchange)
            try:
                await response(scope, receive, send)
            except BaseException:
                exchange.outcome += "; sending it failed"
                raise
        finally:
            # Whatever happened to the reply (sent, failed, client gone), the request's spools
            # go; a handler that kept a document has moved its file away already.
            _discard(exchange.message)
            exchange.log_outcome()

    def _wsdl(self, request: Request) -> Response:
        if "wsdl" not in {key.lower() for key in request.query_params} or self.wsdl_path is None:
            return Response(
                "this is a SOAP 1.2 endpoint: POST a message, or GET ?wsdl\n",
                status_code=404,
                media_type="text/plain",
            )
        wsdl = self.wsdl_path.read_text(encoding="utf-8")
        # Name the address the client actually used, not the one written in the file.
        # The Host header is the client's to choose: escape it as an attribute value.
        endpoint = quoteattr(str(request.url.replace(query="")))
        wsdl = re.sub(
            r'(<(?:\w+:)?address\s+location=)"[^"]*"', lambda match: match.group(1) + endpoint, wsdl
        )
        return Response(wsdl, media_type="text/xml; charset=utf-8")

    async def _post(self, request: Request, exchange: _Exchange) -> Response:
        declared = request.headers.get("content-length")
        limit = self.max_request_bytes
        if limit and declared and declared.isdigit() and int(declared) > limit:
            exchange.outcome = "fault Sender (413 too large)"
            return _fault_response(RequestTooLarge(limit), None, status=413)

        message = None
        relates_to = None
        try:
            body = _timed(request.stream())
            if self.max_request_bytes:
                # Content-Length may be absent (chunked) or wrong: count what really arrives.
                body = _limited(body, self.max_request_bytes)
            content_type = request.headers.get("content-type", "")
            message = await read_message(content_type, body, self.spool_factory)
            exchange.message = message
            envelope = parse_envelope(message.envelope_root, self.understood)
            relates_to = envelope.message_id
            exchange.action, exchange.message_id = envelope.action, envelope.message_id
            handler = self.handlers.get(envelope.action)
            if handler is None:
                raise SoapFault(
                    "Sender",
                    f"action {envelope.action!r} is not supported at this endpoint",
                    subcode=f"{{{WSA}}}ActionNotSupported",
                )
            log.info(
                "SOAP request %s, message %s",
                envelope.action,
                envelope.message_id,
                extra={"wsa_action": envelope.action, "wsa_message_id": envelope.message_id},
            )
            exchange.in_handler = True
            reply = await handler(SoapRequest(envelope, message, self.spool_factory))
            exchange.in_handler = False

            envelope_out = build_envelope(reply.action, reply.body, relates_to=relates_to)
            if message.is_mtom:
                content_type, body_out = mtom_response(envelope_out, reply.parts)
            else:
                content_type, body_out = inline_response(envelope_out, reply.parts)
        except ClientDisconnect:
            exchange.outcome = "client went away before the request body ended"
            return Response(status_code=400)
        except RequestTooLarge as fault:
            exchange.outcome = "fault Sender (413 too large)"
            return _fault_response(fault, None, status=413)
        except SoapFault as fault:
            exchange.outcome = _fault_outcome(fault, exchange.in_handler)
            exchange.message_id = exchange.message_id or _message_id(message)
            return _fault_response(fault, relates_to or exchange.message_id)
        except Exception:
            log.exception(
                "internal error while handling SOAP request %s, message %s",
                exchange.action,
                exchange.message_id,
                extra={"wsa_action": exchange.action, "wsa_message_id": exchange.message_id},
            )
            exchange.outcome = "fault Receiver: internal error"
            return _fault_response(SoapFault("Receiver", "internal error"), relates_to)

        exchange.outcome = f"reply {reply.action} (HTTP {reply.http_status})"
        return StreamingResponse(
            body_out,
            status_code=reply.http_status,
            media_type=None,
            headers={"Content-Type": content_type},
        )


def _fault_outcome(fault: SoapFault, raised_by_handler: bool) -> str:
    """The fault for the INFO log. Our own faults name what is wrong with the message's form
    (MIME, XML, envelope, addressing), never its content; a handler's reason may quote its
    content, so it goes to DEBUG only."""
    subcode = f" ({fault.subcode})" if fault.subcode else ""
    if not raised_by_handler:
        return f"fault {fault.code}{subcode}: {fault.reason}"
    log.debug("SOAP fault reason from the handler: %s", fault.reason)
    return f"fault {fault.code}{subcode} raised by the handler"


class _Exchange:
    """What one POST did, for the closing log line and the clean-up of its spools."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.message: IncomingMessage | None = None
        self.action: str | None = None
        self.message_id: str | None = None
        self.in_handler = False
        self.outcome = "no answer"

    def log_outcome(self) -> None:
        duration_ms = round((time.monotonic() - self.started) * 1000)
        log.info(
            "SOAP request %s, message %s: %s (%d ms)",
            self.action,
            self.message_id,
            self.outcome,
            duration_ms,
            extra={
                "wsa_action": self.action,
                "wsa_message_id": self.message_id,
                "outcome": self.outcome,
                "duration_ms": duration_ms,
            },
        )


async def _lifespan(receive, send) -> None:
    """Nothing to start or stop: acknowledge the server's lifespan events."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _timed(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The request body, failing when the client stalls for BODY_READ_TIMEOUT seconds."""
    iterator = stream.__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(iterator.__anext__(), BODY_READ_TIMEOUT)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise SoapFault(
                "Sender", f"the request body stalled for {BODY_READ_TIMEOUT:.0f} s before its end"
            ) from None
        if chunk:
            yield chunk


class RequestTooLarge(SoapFault):
    """The request body is longer than the endpoint accepts (HTTP 413)."""

    def __init__(self, limit: int):
        super().__init__("Sender", f"the request exceeds {limit} bytes")


async def _limited(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """The request body, failing as soon as more than ``limit`` bytes have arrived."""
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > limit:
            raise RequestTooLarge(limit)
        yield chunk


def _message_id(message: IncomingMessage | None) -> str | None:
    """The request's wsa:MessageID when the envelope's checks failed before reading it (e.g. a
    MustUnderstand fault), so that the fault still names the request it answers."""
    if message is None or message.envelope_root is None:
        return None
    found = message.envelope_root.findall(f"{{{SOAP12_ENV}}}Header/{{{WSA}}}MessageID")
    return (found[0].text or "").strip() or None if len(found) == 1 else None


def _discard(message: IncomingMessage | None) -> None:
    if message is not None:
        message.discard()


def _fault_response(
    fault: SoapFault, relates_to: str | None, status: int | None = None
) -> Response:
    return Response(
        fault.to_envelope(relates_to),
        status_code=status or fault.http_status,
        media_type="application/soap+xml; charset=utf-8",
    )
