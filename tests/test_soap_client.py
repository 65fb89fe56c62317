"""SoapClient against small stub servers on 127.0.0.1: what it sends, and how it reads replies
that are late, not SOAP, malformed or faults."""

from __future__ import annotations

import asyncio
import re
import socket

import pytest
from lxml import etree
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from soap.client import SoapClient, SoapTransportError
from soap.faults import SoapFault
from soap.mtom import parse_content_type, read_message
from soap.spool import Spool
from soap.xml import SOAP12_ENV, WSA, WSA_ANONYMOUS, parse_xml
from tests import corpus
from tests.servers import serve

MUST_UNDERSTAND = f"{{{SOAP12_ENV}}}mustUnderstand"
ACTION = "urn:ihe:iti:2007:RegisterDocumentSet-b"


class Recorder:
    """A stub SOAP peer: keeps each request, answers with a canned reply."""

    def __init__(self, reply: bytes = b"", content_type: str = "application/soap+xml"):
        self.requests: list[tuple[str, bytes]] = []
        self.reply = reply
        self.content_type = content_type

    async def handle(self, request: Request) -> Response:
        self.requests.append((request.headers.get("content-type", ""), await request.body()))
        return Response(self.reply, media_type=self.content_type)


def ok_reply() -> bytes:
    return (
        f'<e:Envelope xmlns:e="{SOAP12_ENV}" xmlns:a="{WSA}"><e:Header>'
        f'<a:Action e:mustUnderstand="1">{ACTION}Response</a:Action></e:Header>'
        "<e:Body><r:Ok xmlns:r='urn:test'/></e:Body></e:Envelope>"
    ).encode()


def call(url: str, timeout: float = 10, **kwargs):
    body = etree.Element("{urn:test}Register")
    return asyncio.run(SoapClient(timeout=timeout).call(url, ACTION, body, **kwargs))


def stub(recorder: Recorder):
    return serve(Starlette(routes=[Route("/soap", recorder.handle, methods=["POST"])]))


def test_plain_call_sends_soap12_with_addressing_and_the_action_parameter(tmp_path):
    recorder = Recorder(ok_reply())
    with stub(recorder) as base:
        reply = call(base + "/soap", spool_factory=lambda: Spool(tmp_path))

    assert reply.envelope_root.find(".//{urn:test}Ok") is not None
    content_type, sent = recorder.requests[0]
    media_type, params = parse_content_type(content_type)
    assert (media_type, params["action"]) == ("application/soap+xml", ACTION)

    header = parse_xml(sent).find(f"{{{SOAP12_ENV}}}Header")
    action = header.find(f"{{{WSA}}}Action")
    assert (action.text, action.get(MUST_UNDERSTAND)) == (ACTION, "true")
    assert header.findtext(f"{{{WSA}}}To") == base + "/soap"
    assert header.findtext(f"{{{WSA}}}ReplyTo/{{{WSA}}}Address") == WSA_ANONYMOUS
    assert re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", header.findtext(f"{{{WSA}}}MessageID"))


def test_mtom_call_without_parts_is_a_multipart_package_with_the_envelope_as_root(tmp_path):
    recorder = Recorder(ok_reply())
    with stub(recorder) as base:
        call(base + "/soap", mtom=True).discard()

    content_type, sent = recorder.requests[0]
    media_type, params = parse_content_type(content_type)
    assert media_type == "multipart/related"
    assert (params["type"], params["start-info"]) == ("application/xop+xml", "application/soap+xml")

    async def once():
        yield sent

    message = asyncio.run(read_message(content_type, once(), lambda: Spool(tmp_path)))
    assert message.is_mtom and message.attachments == {}
    assert message.envelope_root.findtext(f".//{{{WSA}}}Action") == ACTION


def test_fault_reply_with_an_addressing_subcode_is_raised_as_that_fault():
    fault = SoapFault("Sender", "no such action", subcode=f"{{{WSA}}}ActionNotSupported")
    with (
        stub(Recorder(fault.to_envelope("urn:uuid:x"))) as base,
        pytest.raises(SoapFault) as caught,
    ):
        call(base + "/soap")
    raised = caught.value
    assert (raised.code, raised.reason, raised.subcode) == (
        "Sender",
        "no such action",
        f"{{{WSA}}}ActionNotSupported",
    )


def test_reply_that_is_not_soap_is_a_transport_error():
    not_soap = Recorder(b"<html>gateway error</html>", "text/html")
    with (
        stub(not_soap) as base,
        pytest.raises(SoapTransportError, match="with text/html; charset=utf-8, not SOAP"),
    ):
        call(base + "/soap")


def test_malformed_dcm4chee_rad69_reply_is_a_receiver_fault_naming_the_reply(tmp_path):
    # Corpus 29, with its missing closing delimiter added: the XML is still not well-formed.
    data = corpus.read("dcm4cheecs-rad69-response.txt").replace(b"\r\n", b"\n")
    head, _, body = data.partition(b"\n\n")
    unfolded = re.sub(rb"\n[ \t]+", b" ", head).decode("latin-1")
    content_type = re.search(r"(?im)^content-type:\s*(.+?)\s*$", unfolded).group(1)
    boundary = parse_content_type(content_type)[1]["boundary"].encode()
    recorder = Recorder(body + b"\n--" + boundary + b"--\n", content_type)

    with stub(recorder) as base, pytest.raises(SoapFault) as caught:
        call(base + "/soap", spool_factory=lambda: Spool(tmp_path))
    assert caught.value.code == "Receiver"
    assert caught.value.reason.startswith(f"malformed reply from {base}/soap")
    assert "not well-formed XML" in caught.value.reason
    assert list(tmp_path.iterdir()) == []


def test_peer_that_never_answers_is_a_transport_error_after_the_timeout():
    # A listening socket that nobody accepts from: the connection opens, no answer ever comes.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with pytest.raises(SoapTransportError, match=r"did not answer within 0\.5 s"):
            call(f"http://127.0.0.1:{port}/soap", timeout=0.5)
