"""SoapService on a real uvicorn server on 127.0.0.1, driven by SoapClient, httpx and raw sockets."""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import time
from pathlib import Path

import httpx
import pytest
from lxml import etree
from starlette.middleware.gzip import GZipMiddleware

from soap.client import SoapClient, SoapTransportError
from soap.faults import SoapFault
from soap.mtom import OutgoingPart, xop_include
from soap.service import SoapReply, SoapRequest, SoapService
from soap.spool import Spool
from soap.xml import SOAP12_ENV, WSA, XOP_NS, parse_xml
from tests import corpus
from tests.servers import free_port, serve

ENV = SOAP12_ENV
PNR_ACTION = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
XDS = "urn:ihe:iti:xds-b:2007"
MAX_REQUEST_BYTES = 1_000_000

WSDL = """<?xml version="1.0" encoding="UTF-8"?>
<wsdl:definitions xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/"
    xmlns:soap12="http://schemas.xmlsoap.org/wsdl/soap12/" targetNamespace="urn:test">
  <wsdl:service name="Echo"><wsdl:port name="EchoPort" binding="tns:EchoBinding">
    <soap12:address location="http://placeholder.invalid/written-in-the-file"/>
  </wsdl:port></wsdl:service>
</wsdl:definitions>
"""


class Calls:
    """What the handlers saw, so that tests can tell whether a handler ran."""

    def __init__(self):
        self.actions: list[str] = []


async def echo(request: SoapRequest) -> SoapReply:
    """Answers with the request body; every {urn:test}Document comes back as an attachment."""
    CALLS.actions.append(request.envelope.action)
    body = etree.fromstring(etree.tostring(request.envelope.body))
    parts = []
    for number, element in enumerate(body.iter("{urn:test}Document")):
        attachment = request.content(element)
        content_id = f"echo-{number}@test"
        xop_include(element, content_id)
        parts.append(OutgoingPart(content_id, "application/octet-stream", path=attachment.path))
    return SoapReply("urn:test:EchoResponse", body, parts)


async def provide_and_register(request: SoapRequest) -> SoapReply:
    """Counts the documents of an ITI-41 request, attached or inline."""
    CALLS.actions.append(request.envelope.action)
    sizes = [
        request.content(element).size
        for element in request.envelope.body.iter(f"{{{XDS}}}Document")
    ]
    reply = etree.Element("{urn:test}Received")
    reply.text = " ".join(str(size) for size in sizes)
    return SoapReply(PNR_ACTION + "Response", reply)


async def refuse(request: SoapRequest) -> SoapReply:
    CALLS.actions.append(request.envelope.action)
    raise SoapFault("Sender", "refused on purpose", subcode="{urn:test:faults}OnPurpose")


async def crash(request: SoapRequest) -> SoapReply:
    CALLS.actions.append(request.envelope.action)
    raise RuntimeError("secret internal detail /some/path")


async def bad_reply(request: SoapRequest) -> SoapReply:
    """A handler bug: its reply references an attachment it does not supply."""
    CALLS.actions.append(request.envelope.action)
    body = etree.Element("{urn:test}Reply")
    xop_include(etree.SubElement(body, "{urn:test}Document"), "forgotten@test")
    return SoapReply("urn:test:BadReplyResponse", body)


CALLS = Calls()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("soap-service")
    wsdl = folder / "echo.wsdl"
    wsdl.write_text(WSDL)
    spools = folder / "spools"
    spools.mkdir()
    service = SoapService(
        {
            "urn:test:Echo": echo,
            PNR_ACTION: provide_and_register,
            "urn:test:Refuse": refuse,
            "urn:test:Crash": crash,
            "urn:test:BadReply": bad_reply,
        },
        spool_factory=lambda: Spool(spools),
        wsdl_path=wsdl,
        max_request_bytes=MAX_REQUEST_BYTES,
    )
    with serve(service) as url:
        yield url + "/soap/echo", spools


@pytest.fixture
def url(server) -> str:
    CALLS.actions.clear()
    return server[0]


def leftover_spools(server) -> list[Path]:
    """Spool files still on disk once the server has finished with its requests."""
    deadline = time.monotonic() + 2
    while (left := list(server[1].iterdir())) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def ping(*documents: bytes) -> etree._Element:
    body = etree.Element("{urn:test}Ping")
    for data in documents:
        etree.SubElement(body, "{urn:test}Document").text = base64.b64encode(data).decode()
    return body


def call(url: str, action: str, body: etree._Element, **kwargs):
    return asyncio.run(SoapClient(timeout=10).call(url, action, body, **kwargs))


def assert_healthy(url: str) -> None:
    reply = call(url, "urn:test:Echo", ping(b"still alive"))
    assert reply.envelope_root.find(f".//{{{XOP_NS}}}Include") is None
    reply.discard()


# Client and service together ------------------------------------------------------------------


def test_plain_soap_echo_answers_plain_soap_with_inline_base64(url, server):
    reply = call(url, "urn:test:Echo", ping(b"hello", b"\x00\xff" * 1000))
    assert not reply.is_mtom
    header = reply.envelope_root.find(f"{{{ENV}}}Header")
    assert header.findtext(f"{{{WSA}}}Action") == "urn:test:EchoResponse"
    assert header.findtext(f"{{{WSA}}}RelatesTo").startswith("urn:uuid:")
    documents = reply.envelope_root.findall(".//{urn:test}Document")
    assert [base64.b64decode(d.text) for d in documents] == [b"hello", b"\x00\xff" * 1000]
    reply.discard()
    assert CALLS.actions == ["urn:test:Echo"]
    assert leftover_spools(server) == []


def test_mtom_echo_answers_mtom_with_the_same_bytes(url, server, tmp_path):
    payloads = [b"first", bytes(range(256)) * 300, b""]
    body = etree.Element("{urn:test}Ping")
    parts = []
    for number, data in enumerate(payloads):
        path = tmp_path / f"doc-{number}"
        path.write_bytes(data)
        xop_include(etree.SubElement(body, "{urn:test}Document"), f"doc-{number}@client")
        parts.append(OutgoingPart(f"doc-{number}@client", "application/octet-stream", path=path))

    reply = call(url, "urn:test:Echo", body, parts=parts, spool_factory=lambda: Spool(tmp_path))
    assert reply.is_mtom
    assert [a.path.read_bytes() for a in reply.attachments.values()] == payloads
    reply.discard()
    assert leftover_spools(server) == []


def test_fault_reply_is_raised_with_code_and_subcode(url, server):
    with pytest.raises(SoapFault) as caught:
        call(url, "urn:test:Refuse", ping())
    assert (caught.value.code, caught.value.subcode) == ("Sender", "{urn:test:faults}OnPurpose")
    assert caught.value.reason == "refused on purpose"


def test_handler_crash_is_a_receiver_fault_without_internal_detail(url):
    response = httpx.post(
        url,
        content=corpus.wrap_in_envelope(b"<x:Ping xmlns:x='urn:test'/>", "urn:test:Crash"),
        headers={"Content-Type": "application/soap+xml"},
    )
    assert response.status_code == 500
    assert b"secret internal detail" not in response.content
    fault = parse_xml(response.content).find(f"{{{ENV}}}Body/{{{ENV}}}Fault")
    assert fault.findtext(f"{{{ENV}}}Code/{{{ENV}}}Value") == "env:Receiver"


def test_handler_reply_that_cannot_be_built_is_a_receiver_fault(url):
    with pytest.raises(SoapFault) as caught:
        call(url, "urn:test:BadReply", ping())
    assert (caught.value.code, caught.value.reason) == ("Receiver", "internal error")


def test_client_reads_a_gzip_encoded_reply(tmp_path):
    service = SoapService({"urn:test:Echo": echo}, spool_factory=lambda: Spool(tmp_path))
    with serve(GZipMiddleware(service, minimum_size=10)) as base:
        response = httpx.post(
            base,
            content=corpus.wrap_in_envelope(b"<x:Ping xmlns:x='urn:test'/>", "urn:test:Echo"),
            headers={"Content-Type": "application/soap+xml", "Accept-Encoding": "gzip"},
        )
        assert response.headers["content-encoding"] == "gzip"  # the path under test is taken
        reply = call(base, "urn:test:Echo", ping(b"compressed on the way back"))
    [document] = reply.envelope_root.findall(".//{urn:test}Document")
    assert base64.b64decode(document.text) == b"compressed on the way back"


def test_unknown_action_is_400_action_not_supported(url):
    with pytest.raises(SoapFault) as caught:
        call(url, "urn:test:Nobody", ping())
    assert (caught.value.code, caught.value.subcode) == ("Sender", f"{{{WSA}}}ActionNotSupported")

    response = httpx.post(
        url,
        content=corpus.wrap_in_envelope(b"<x:Ping xmlns:x='urn:test'/>", "urn:test:Nobody"),
        headers={"Content-Type": "application/soap+xml"},
    )
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/soap+xml")
    assert (
        parse_xml(response.content).findtext(f"{{{ENV}}}Header/{{{WSA}}}Action")
        == "http://www.w3.org/2005/08/addressing/fault"
    )
    assert CALLS.actions == []


def test_unreachable_port_is_a_transport_error():
    with pytest.raises(SoapTransportError):
        call(f"http://127.0.0.1:{free_port()}/nobody", "urn:test:Echo", ping())


def test_corpus_mtom_requests_reach_the_handler(url, server):
    cases = [
        (
            corpus.body_with_testplan(
                "nist-PnrXop-Xop-body.txt", "nist-PnrXop-Xop-testplan.xml", True
            ),
            "40",
        ),
        (
            corpus.body_with_testplan(
                "nist-PnrXop-encodedURL-body.txt", "nist-PnrXop-Xop-testplan.xml"
            ),
            "36",
        ),
        (corpus.http_request("nist-http-mtom-pnr.txt"), "1465"),
        (corpus.boundary_test_request(crlf=True), "6090"),
    ]
    for (content_type, body), sizes in cases:
        response = httpx.post(url, content=body, headers={"Content-Type": content_type})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("multipart/related")  # MTOM in, MTOM out
        assert re.search(rb"<(\w+:)?Received[^>]*>" + sizes.encode() + rb"<", response.content)
    assert leftover_spools(server) == []


def test_must_understand_fault_over_http_names_the_block_and_relates_to_the_request(url):
    request = corpus.wrap_in_envelope(b"<x:Ping xmlns:x='urn:test'/>", "urn:test:Echo").replace(
        b"</soap:Header>",
        b'<v:Secret xmlns:v="urn:vendor" soap:mustUnderstand="true"/></soap:Header>',
    )
    message_id = re.search(rb"<wsa:MessageID>([^<]+)<", request).group(1).decode()
    response = httpx.post(url, content=request, headers={"Content-Type": "application/soap+xml"})

    assert response.status_code == 500
    header = parse_xml(response.content).find(f"{{{ENV}}}Header")
    assert header.findtext(f"{{{WSA}}}RelatesTo") == message_id
    block = header.find(f"{{{ENV}}}NotUnderstood")
    prefix, _, local = block.get("qname").partition(":")
    assert (block.nsmap[prefix], local) == ("urn:vendor", "Secret")
    assert CALLS.actions == []


def test_soap11_request_over_http_is_500_version_mismatch(url):
    soap11 = (
        b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><x/></s:Body>'
        b"</s:Envelope>"
    )
    response = httpx.post(url, content=soap11, headers={"Content-Type": "text/xml"})
    assert response.status_code == 500
    assert b"env:VersionMismatch" in response.content


# WSDL ------------------------------------------------------------------------------------------


def test_wsdl_names_the_address_the_client_used(url):
    response = httpx.get(url + "?wsdl")
    assert response.status_code == 200
    location = parse_xml(response.content).find(
        ".//{http://schemas.xmlsoap.org/wsdl/soap12/}address"
    )
    assert location.get("location") == url

    response = httpx.get(url + "?WSDL", headers={"Host": 'name"with<quotes:1'})
    assert response.status_code == 200
    parse_xml(response.content)  # still well-formed XML


def test_get_without_wsdl_is_404(url):
    assert httpx.get(url).status_code == 404


# Raw sockets -----------------------------------------------------------------------------------


def host_port(url: str) -> tuple[str, int]:
    match = re.match(r"http://([\d.]+):(\d+)(/.*)", url)
    return match.group(1), int(match.group(2))


def read_until_closed(sock: socket.socket, timeout: float = 5) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def read_response(sock: socket.socket, timeout: float = 5) -> bytes:
    """One HTTP response with a Content-Length, head and body."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", data).group(1))
    while len(data) < data.index(b"\r\n\r\n") + 4 + length:
        data += sock.recv(65536)
    return data


@pytest.mark.parametrize("ending", ["half-close", "close"])
def test_body_shorter_than_content_length_reaches_no_handler(url, server, ending):
    content_type, body = corpus.body_with_testplan(
        "nist-PnrXop-Xop-body.txt", "nist-PnrXop-Xop-testplan.xml", True
    )
    head = (
        f"POST /soap/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body) + 500}\r\n\r\n"
    ).encode()
    with socket.create_connection(host_port(url)) as sock:
        sock.sendall(head + body)
        if ending == "half-close":
            sock.shutdown(socket.SHUT_WR)
            answer = read_until_closed(sock)
            assert not answer.startswith(b"HTTP/1.1 200")
    time.sleep(0.2)
    assert CALLS.actions == []
    assert leftover_spools(server) == []
    assert_healthy(url)


def test_stale_content_length_on_an_open_connection_times_out_with_a_fault(
    url, server, monkeypatch
):
    # Corpus 6 replayed with its stale Content-Length (larger than the body) and the socket kept open.
    monkeypatch.setattr("soap.service.BODY_READ_TIMEOUT", 0.5)
    data = corpus.read("nist-selftest-socket-request.txt")
    content_type, body = corpus.http_request("nist-selftest-socket-request.txt")
    stale = int(re.search(rb"Content-Length:\s*(\d+)", data).group(1))
    assert stale > len(body)
    head = (
        f"POST /soap/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {stale}\r\n\r\n"
    ).encode()
    with socket.create_connection(host_port(url)) as sock:
        sock.sendall(head + body)
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"stalled" in answer
    assert CALLS.actions == []
    assert leftover_spools(server) == []
    assert_healthy(url)


def test_expect_100_continue_with_lower_case_headers_is_answered(url):
    _, body = corpus.boundary_test_request(crlf=True)
    head = corpus.read("nist-boundryTest-request_hdr.txt").decode("latin-1").split("\r\n")
    lines = ["POST /soap/echo HTTP/1.1"]
    for line in head[1:]:
        name = line.partition(":")[0]
        if name == "host":
            line = "host: 127.0.0.1"
        elif name == "content-length":
            line = f"content-length: {len(body)}"
        elif name == "connection":
            line = "connection: close"
        if line:
            lines.append(line)
    assert "expect: 100-continue" in lines

    with socket.create_connection(host_port(url)) as sock:
        sock.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n")
        sock.settimeout(5)
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        answer = interim[interim.index(b"\r\n\r\n") + 4 :] + read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert b">6090<" in answer
    assert CALLS.actions == [PNR_ACTION]


def test_request_over_max_request_bytes_is_413(url, server):
    envelope = corpus.wrap_in_envelope(b"<x:Ping xmlns:x='urn:test'/>", "urn:test:Echo")
    content_type, body = corpus.mtom_with_attachments(
        envelope,
        {"big@x": ("application/octet-stream", b"x" * (MAX_REQUEST_BYTES + 1))},
        "urn:test:Echo",
    )
    # Announced by Content-Length ...
    response = httpx.post(url, content=body, headers={"Content-Type": content_type})
    assert response.status_code == 413
    assert b"env:Sender" in response.content

    # ... and sent chunked, with no Content-Length to go by.
    def pieces():
        for offset in range(0, len(body), 65536):
            yield body[offset : offset + 65536]

    response = httpx.post(url, content=pieces(), headers={"Content-Type": content_type})
    assert response.status_code == 413
    assert CALLS.actions == []
    assert leftover_spools(server) == []
    assert_healthy(url)


def test_client_reads_a_reply_streamed_by_the_server_in_chunks(url, tmp_path):
    # A 3 MB document each way through the real server, read back incrementally by the client.
    data = bytes(range(251)) * 12_000
    path = tmp_path / "doc"
    path.write_bytes(data)
    body = etree.Element("{urn:test}Ping")
    xop_include(etree.SubElement(body, "{urn:test}Document"), "doc@client")
    with pytest.raises(SoapFault) as caught:  # above this server's limit
        call(
            url,
            "urn:test:Echo",
            body,
            parts=[OutgoingPart("doc@client", "application/octet-stream", path=path)],
        )
    assert caught.value.code == "Sender"
    assert "exceeds" in caught.value.reason

    small = data[:500_000]
    path.write_bytes(small)
    reply = call(
        url,
        "urn:test:Echo",
        body,
        parts=[OutgoingPart("doc@client", "x/y", path=path)],
        spool_factory=lambda: Spool(tmp_path),
    )
    assert [a.path.read_bytes() for a in reply.attachments.values()] == [small]
    reply.discard()
