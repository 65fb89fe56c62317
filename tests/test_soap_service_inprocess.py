"""SoapService in-process (Starlette TestClient): what it logs, and who owns the spooled files.

The TestClient returns only once the ASGI call has finished, so the closing log line and the
clean-up of the request's spools have happened when a test looks at them.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from pathlib import Path

import pytest
from lxml import etree
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from soap.envelope import build_envelope
from soap.faults import SoapFault
from soap.mtom import OutgoingPart, mtom_response, xop_include
from soap.service import SoapReply, SoapRequest, SoapService
from soap.spool import Spool
from soap.xml import SOAP12_ENV, parse_xml

# Stands for patient data in a body: it must never reach a log line at INFO or above.
PATIENT_NAME = "Doe^Jane^Private"
SECRET_DOCUMENT = b"report about " + PATIENT_NAME.encode()


class Kept:
    """Where the "keep" handler moved the documents it took ownership of."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.paths: list[Path] = []


@pytest.fixture
def setup(tmp_path):
    spools = tmp_path / "spools"
    spools.mkdir()
    kept = Kept(tmp_path / "kept")
    kept.folder.mkdir()

    async def keep(request: SoapRequest) -> SoapReply:
        """Takes the first document (moves its file, as a blob store commit does)."""
        documents = list(request.envelope.body.iter("{urn:test}Document"))
        first = request.content(documents[0])
        for element in documents[1:]:
            request.content(element)
        target = kept.folder / first.path.name
        os.replace(first.path, target)
        kept.paths.append(target)
        return SoapReply("urn:test:KeepResponse", etree.Element("{urn:test}Kept"))

    async def refuse(request: SoapRequest) -> SoapReply:
        raise SoapFault("Sender", f"patient {PATIENT_NAME} unknown")

    async def crash(request: SoapRequest) -> SoapReply:
        raise RuntimeError("broken on purpose")

    service = SoapService(
        {"urn:test:Keep": keep, "urn:test:Refuse": refuse, "urn:test:Crash": crash},
        spool_factory=lambda: Spool(spools),
    )
    app = Starlette(routes=[Route("/soap", service)])
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, spools, kept


def plain_request(action: str, *documents: bytes) -> bytes:
    body = etree.Element("{urn:test}Request")
    etree.SubElement(body, "{urn:test}Name").text = PATIENT_NAME
    for data in documents:
        etree.SubElement(body, "{urn:test}Document").text = base64.b64encode(data).decode()
    envelope = build_envelope(action, body, message_id="urn:uuid:0000-test-1")
    return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")


async def collect(chunks) -> bytes:
    return b"".join([chunk async for chunk in chunks])


def post(client: TestClient, data: bytes, content_type: str = "application/soap+xml"):
    return client.post("/soap", content=data, headers={"Content-Type": content_type})


def fault_code(content: bytes) -> str:
    return parse_xml(content).findtext(f".//{{{SOAP12_ENV}}}Code/{{{SOAP12_ENV}}}Value")


def info_messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]


def test_handler_that_moves_a_document_keeps_it_and_the_other_spools_are_discarded(setup):
    client, spools, kept = setup
    response = post(client, plain_request("urn:test:Keep", SECRET_DOCUMENT, b"second"))
    assert response.status_code == 200
    assert [path.read_bytes() for path in kept.paths] == [SECRET_DOCUMENT]
    assert list(spools.iterdir()) == []


def test_mtom_attachments_are_discarded_after_the_reply_unless_taken(setup):
    client, spools, kept = setup
    body = etree.Element("{urn:test}Request")
    for number in range(2):
        xop_include(etree.SubElement(body, "{urn:test}Document"), f"doc-{number}@test")
    envelope = build_envelope("urn:test:Keep", body)
    parts = [OutgoingPart(f"doc-{n}@test", "text/plain", chunks=[b"part %d" % n]) for n in range(2)]
    content_type, chunks = mtom_response(envelope, parts)
    response = post(client, asyncio.run(collect(chunks)), content_type)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("multipart/related")
    assert [path.read_bytes() for path in kept.paths] == [b"part 0"]
    assert list(spools.iterdir()) == []


def test_info_log_names_action_message_id_and_outcome_but_nothing_from_the_body(setup, caplog):
    client, _, _ = setup
    caplog.set_level(logging.DEBUG, logger="soap")
    post(client, plain_request("urn:test:Keep", SECRET_DOCUMENT))

    closing = [m for m in info_messages(caplog) if "reply urn:test:KeepResponse" in m]
    assert len(closing) == 1
    assert "urn:test:Keep" in closing[0] and "urn:uuid:0000-test-1" in closing[0]
    record = next(r for r in caplog.records if r.getMessage() == closing[0])
    assert (record.wsa_action, record.wsa_message_id) == ("urn:test:Keep", "urn:uuid:0000-test-1")
    assert record.outcome.startswith("reply") and record.duration_ms >= 0
    assert not [m for m in info_messages(caplog) if PATIENT_NAME in m]


def test_handler_fault_reason_stays_out_of_the_info_log(setup, caplog):
    client, _, _ = setup
    caplog.set_level(logging.DEBUG, logger="soap")
    response = post(client, plain_request("urn:test:Refuse"))

    assert response.status_code == 400
    assert PATIENT_NAME.encode() in response.content  # the peer gets the reason ...
    assert any("fault Sender raised by the handler" in m for m in info_messages(caplog))
    assert not [m for m in info_messages(caplog) if PATIENT_NAME in m]  # ... the INFO log does not
    assert any(PATIENT_NAME in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)


def test_envelope_fault_is_logged_with_its_reason(setup, caplog):
    client, _, _ = setup
    caplog.set_level(logging.INFO, logger="soap")
    envelope = (
        b'<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Header/>'
        b"<e:Body><x/></e:Body></e:Envelope>"
    )
    response = post(client, envelope)

    assert response.status_code == 400
    assert any("wsa:Action is required" in m for m in info_messages(caplog))


def test_handler_crash_logs_one_traceback_at_error_and_answers_receiver(setup, caplog):
    client, _, _ = setup
    caplog.set_level(logging.INFO, logger="soap")
    response = post(client, plain_request("urn:test:Crash"))

    assert response.status_code == 500
    assert fault_code(response.content) == "env:Receiver"
    assert b"broken on purpose" not in response.content and b"Traceback" not in response.content
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert "urn:uuid:0000-test-1" in errors[0].getMessage()


def test_other_methods_are_405_and_wsdl_without_a_file_is_404(setup):
    client, _, _ = setup
    assert client.get("/soap?wsdl").status_code == 404  # this service has no WSDL file
    response = client.request("PUT", "/soap", content=b"x")
    assert response.status_code == 405
