"""A small SOAP 1.2 client with WS-Addressing and MTOM, on httpx; request and reply streamed."""

from __future__ import annotations

import tempfile
from collections.abc import Callable

import httpx
from lxml import etree

from soap.envelope import build_envelope
from soap.faults import SoapFault, parse_fault
from soap.mtom import (
    IncomingMessage,
    OutgoingPart,
    inline_response,
    mtom_response,
    read_message,
)
from soap.spool import Spool
from soap.xml import SOAP12_ENV, WSA_ANONYMOUS

SOAP_MEDIA_TYPES = ("multipart/related", "application/soap+xml", "text/xml", "application/xml")


class SoapTransportError(Exception):
    """The peer could not be reached, or did not answer in time, or not in SOAP."""


class SoapClient:
    def __init__(self, timeout: float = 30.0):
        self.timeout = timeout

    async def call(
        self,
        url: str,
        action: str,
        body: etree._Element,
        parts: list[OutgoingPart] = (),
        mtom: bool = False,
        spool_factory: Callable | None = None,
    ) -> IncomingMessage:
        """Send ``body`` with ``action`` to ``url``; the reply, or SoapFault/SoapTransportError."""
        envelope = build_envelope(action, body, to=url, reply_to=WSA_ANONYMOUS)
        if mtom or parts:
            content_type, content = mtom_response(envelope, list(parts))
            content_type += f'; action="{action}"'
        else:
            content_type, content = inline_response(envelope, list(parts))
            content_type += f'; action="{action}"'
        spool_factory = spool_factory or (lambda: Spool(tempfile.gettempdir()))

        try:
            async with (
                httpx.AsyncClient(timeout=self.timeout) as client,
                client.stream(
                    "POST", url, content=content, headers={"Content-Type": content_type}
                ) as response,
            ):
                reply_type = response.headers.get("content-type", "")
                if not reply_type.lower().startswith(SOAP_MEDIA_TYPES):
                    raise SoapTransportError(
                        f"{url} answered HTTP {response.status_code} with "
                        f"{reply_type or 'no content type'}, not SOAP"
                    )
                # aiter_bytes undoes any Content-Encoding (gzip) the server chose.
                reply = await read_message(reply_type, response.aiter_bytes(), spool_factory)
        except httpx.TimeoutException as exc:
            raise SoapTransportError(
                f"{url} did not answer within {self.timeout:g} s ({exc.__class__.__name__})"
            ) from None
        except httpx.HTTPError as exc:
            raise SoapTransportError(f"{url}: {exc.__class__.__name__}: {exc}") from None
        except SoapFault as fault:
            # read_message speaks as a receiver judging a request; here the broken message is
            # the peer's reply, so the fault lies with the service we called.
            raise SoapFault("Receiver", f"malformed reply from {url}: {fault.reason}") from None

        fault = reply.envelope_root.find(f"{{{SOAP12_ENV}}}Body/{{{SOAP12_ENV}}}Fault")
        if fault is not None:
            reply.discard()
            raise parse_fault(fault)
        return reply
