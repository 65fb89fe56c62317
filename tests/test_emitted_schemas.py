"""Every kind of message the product emits, checked against the official schemas.

Each message is captured as it leaves the product over HTTP (answers of the service; requests the
repository and the publisher send, caught by recording stubs on 127.0.0.1). Two checks per message:

* the Body element against IHE's XDS.b_DocumentRepository.xsd with the OASIS ebRS 3.0 schemas it
  imports (rs, rim, lcm, query), or the RAD-69 schema; xop:Include is first replaced by the
  attachment in base64, as no XOP schema exists;
* the whole envelope against the W3C SOAP 1.2 envelope schema with WS-Addressing 1.0, which checks
  the header blocks and the Fault strictly and the Body content laxly.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import importlib.util
import re
import uuid
from types import SimpleNamespace
from urllib.parse import unquote
from xml.sax.saxutils import escape

import pytest
from lxml import etree
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from tests import corpus
from tests.conftest import NIST_IDS
from tests.repository_helpers import (
    SOAP,
    WSA,
    Answer,
    read_answer,
    retrieve_request,
    settings_for,
)
from tests.servers import serve
from tests.test_repository import provide_and_register, slot
from tests.test_soap_envelope import envelope_and_addressing_schema
from tests.test_wsdl_schemas import official_iti_schema
from xds import ebrim
from xds.service import create_app

REPOSITORY = "/xds/repository"
REGISTRY = "/xds/registry"
PATIENT = "P42^^^&1.2.3.9&ISO"
HAS_RAD69 = importlib.util.find_spec("xds.rad69") is not None
DEPT022 = NIST_IDS / "IDS-DEPT022-a" / "images"


# The checks ---------------------------------------------------------------------------------------

def with_inline_documents(element: etree._Element, attachments: dict[str, bytes]) -> etree._Element:
    """A copy of ``element`` where each xop:Include is replaced by its attachment in base64."""
    element = copy.deepcopy(element)
    for include in list(element.iter(f"{{{ebrim.XOP}}}Include")):
        parent = include.getparent()
        parent.remove(include)
        parent.text = base64.b64encode(attachments[unquote(include.get("href")[len("cid:"):])]).decode()
    return element


def assert_valid_message(answer: Answer, schema: etree.XMLSchema | None = None) -> None:
    envelope_schema = envelope_and_addressing_schema()
    assert envelope_schema.validate(answer.envelope), envelope_schema.error_log

    header = answer.envelope.find(f"{{{SOAP}}}Header")
    action = header.find(f"{{{WSA}}}Action")
    assert action.get(f"{{{SOAP}}}mustUnderstand") in ("1", "true"), "IHE_WSA101"
    request_message_id = getattr(answer, "request_message_id", None)
    if request_message_id:  # a reply names the request it answers
        assert header.findtext(f"{{{WSA}}}RelatesTo") == request_message_id
    if schema is None:  # a Fault: the envelope schema knows its elements
        return
    # Validate a standalone copy so that the Body element is the document root.
    body = etree.fromstring(etree.tostring(with_inline_documents(answer.body, answer.attachments)))
    assert schema.validate(body), schema.error_log


def answer_of(response) -> Answer:
    return read_answer(response)


def captured(content_type: str, body: bytes) -> Answer:
    """A request caught by a stub, read like an answer (standard library MIME parser)."""
    return read_answer(SimpleNamespace(status_code=0, headers={"content-type": content_type}, content=body))


# The service with its embedded registry --------------------------------------------------------

@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = settings_for(tmp_path_factory.mktemp("emitted"))
    with TestClient(create_app(settings)) as test_client:
        test_client.settings = settings
        yield test_client


def post(client, envelope: bytes, content_type: str = "application/soap+xml", path: str = REPOSITORY) -> Answer:
    answer = answer_of(client.post(path, content=envelope, headers={"Content-Type": content_type}))
    message_id = re.search(rb"<wsa:MessageID>([^<]+)</wsa:MessageID>", envelope)
    answer.request_message_id = message_id.group(1).decode() if message_id else None
    return answer


def post_mtom(client, envelope: bytes, action: str, path: str = REPOSITORY) -> Answer:
    content_type, body = corpus.mtom_single_part(envelope, action)
    return post(client, body, content_type, path)


def new_unique_id() -> str:
    return f"2.25.{uuid.uuid4().int}"


@pytest.fixture(scope="module")
def stored(client) -> str:
    """The uniqueId of a document the repository holds."""
    unique_id = new_unique_id()
    assert post(client, provide_and_register(unique_id, b"stored\r\n")).status == ebrim.SUCCESS
    return unique_id


# ITI-41 responses --------------------------------------------------------------------------------

@pytest.mark.parametrize("mtom", [False, True], ids=["plain", "mtom"])
def test_iti41_success_response_is_valid(client, mtom):
    envelope = provide_and_register(new_unique_id(), b"hello")
    answer = post_mtom(client, envelope, ebrim.ITI41_ACTION) if mtom else post(client, envelope)

    assert answer.status == ebrim.SUCCESS
    assert answer.action == ebrim.ITI41_RESPONSE_ACTION
    assert answer.body.tag == ebrim.q("rs", "RegistryResponse")
    assert_valid_message(answer, official_iti_schema())


def test_iti41_failure_for_different_bytes_under_a_known_unique_id_is_valid(client, stored):
    answer = post(client, provide_and_register(stored, b"other bytes"))

    assert answer.status == ebrim.FAILURE and answer.error_codes
    assert_valid_message(answer, official_iti_schema())


def test_iti41_failure_for_a_missing_document_is_valid(client):
    envelope = provide_and_register(new_unique_id(), b"x")
    # Drop the xds:Document: the DocumentEntry has no content.
    tree = etree.fromstring(envelope)
    document = next(tree.iter(ebrim.q("xds", "Document")))
    document.getparent().remove(document)
    answer = post(client, etree.tostring(tree))

    assert answer.status == ebrim.FAILURE
    assert "XDSMissingDocument" in answer.error_codes
    assert_valid_message(answer, official_iti_schema())


# ITI-43 responses --------------------------------------------------------------------------------

@pytest.mark.parametrize("mtom", [False, True], ids=["plain", "mtom"])
def test_iti43_success_response_is_valid(client, stored, mtom):
    envelope = retrieve_request(client.settings.repository.unique_id, stored)
    answer = post_mtom(client, envelope, ebrim.ITI43_ACTION) if mtom else post(client, envelope)

    assert answer.status == ebrim.SUCCESS
    assert answer.action == ebrim.ITI43_RESPONSE_ACTION
    assert answer.is_mtom == mtom
    assert answer.documents() == {stored: ("text/plain", b"stored\r\n")}
    assert_valid_message(answer, official_iti_schema())


def test_iti43_partial_success_response_is_valid(client, stored):
    answer = post(client, retrieve_request(client.settings.repository.unique_id, stored, new_unique_id()))

    assert answer.status == ebrim.PARTIAL_SUCCESS
    assert list(answer.documents()) == [stored]
    assert_valid_message(answer, official_iti_schema())


@pytest.mark.parametrize("case", ["unknown-document", "other-repository"])
def test_iti43_failure_response_is_valid(client, stored, case):
    repository = client.settings.repository.unique_id if case == "unknown-document" else "1.2.3.999"
    answer = post(client, retrieve_request(repository, new_unique_id() if case == "unknown-document" else stored))

    assert answer.status == ebrim.FAILURE and answer.error_codes
    assert_valid_message(answer, official_iti_schema())


# ITI-18 and ITI-42 responses of the embedded registry ------------------------------------------

def stored_query(query_id: str, return_type: str, **parameters: str) -> bytes:
    slots = "".join(slot(name, escape(value)) for name, value in parameters.items())
    body = (f'<query:AdhocQueryRequest xmlns:query="{ebrim.QUERY}" xmlns:rim="{ebrim.RIM}">'
            f'<query:ResponseOption returnType="{return_type}" returnComposedObjects="true"/>'
            f'<rim:AdhocQuery id="{query_id}">{slots}</rim:AdhocQuery></query:AdhocQueryRequest>')
    return corpus.wrap_in_envelope(body.encode(), ebrim.ITI18_ACTION)


@pytest.mark.parametrize("return_type", [ebrim.RETURN_LEAF_CLASS, ebrim.RETURN_OBJECT_REF])
def test_iti18_find_documents_response_is_valid(client, stored, return_type):
    answer = post(client, stored_query(
        ebrim.FIND_DOCUMENTS, return_type,
        **{"$XDSDocumentEntryPatientId": f"'{PATIENT}'",
           "$XDSDocumentEntryStatus": f"('{ebrim.STATUS_APPROVED}')"}), path=REGISTRY)

    assert answer.body.tag == ebrim.q("query", "AdhocQueryResponse")
    assert answer.body.get("status") == ebrim.SUCCESS
    assert answer.action == ebrim.ITI18_RESPONSE_ACTION
    found = "ExtrinsicObject" if return_type == ebrim.RETURN_LEAF_CLASS else "ObjectRef"
    assert len(answer.body.findall(f"{ebrim.q('rim', 'RegistryObjectList')}/{ebrim.q('rim', found)}")) >= 1
    assert_valid_message(answer, official_iti_schema())


def test_iti18_get_documents_response_is_valid(client, stored):
    answer = post(client, stored_query(
        ebrim.GET_DOCUMENTS, ebrim.RETURN_LEAF_CLASS,
        **{"$XDSDocumentEntryUniqueId": f"('{stored}')"}), path=REGISTRY)

    assert answer.body.get("status") == ebrim.SUCCESS
    (entry,) = answer.body.iter(ebrim.q("rim", "ExtrinsicObject"))
    assert stored in [i.get("value") for i in entry.findall(ebrim.q("rim", "ExternalIdentifier"))]
    assert_valid_message(answer, official_iti_schema())


@pytest.mark.parametrize("case", ["unknown-query", "missing-parameter"])
def test_iti18_failure_response_is_valid(client, case):
    if case == "unknown-query":
        request = stored_query(f"urn:uuid:{uuid.uuid4()}", ebrim.RETURN_LEAF_CLASS,
                               **{"$XDSDocumentEntryPatientId": f"'{PATIENT}'"})
    else:
        request = stored_query(ebrim.FIND_DOCUMENTS, ebrim.RETURN_LEAF_CLASS,
                               **{"$XDSDocumentEntryStatus": f"('{ebrim.STATUS_APPROVED}')"})
    answer = post(client, request, path=REGISTRY)

    assert answer.body.get("status") == ebrim.FAILURE
    assert answer.body.find(f".//{ebrim.q('rs', 'RegistryError')}") is not None
    assert_valid_message(answer, official_iti_schema())


def submit_objects(unique_id: str, with_patient: bool = True) -> bytes:
    """The SubmitObjectsRequest of a ProvideAndRegister, as an ITI-42 request."""
    tree = etree.fromstring(provide_and_register(unique_id, b"registered only"))
    request = next(tree.iter(ebrim.q("lcm", "SubmitObjectsRequest")))
    extrinsic = next(request.iter(ebrim.q("rim", "ExtrinsicObject")))
    for name, value in (("hash", "0" * 40), ("size", "15"), ("repositoryUniqueId", "1.2.3.4")):
        extrinsic.insert(0, etree.fromstring(
            f'<rim:Slot xmlns:rim="{ebrim.RIM}" name="{name}"><rim:ValueList><rim:Value>{value}'
            "</rim:Value></rim:ValueList></rim:Slot>"))
    if not with_patient:
        for identifier in list(extrinsic.findall(ebrim.q("rim", "ExternalIdentifier"))):
            if identifier.get("identificationScheme") == ebrim.DE_PATIENT_ID:
                extrinsic.remove(identifier)
    return corpus.wrap_in_envelope(etree.tostring(request), ebrim.ITI42_ACTION)


@pytest.mark.parametrize("valid", [True, False], ids=["success", "failure"])
def test_iti42_response_of_the_embedded_registry_is_valid(client, valid):
    answer = post(client, submit_objects(new_unique_id(), with_patient=valid), path=REGISTRY)

    assert answer.status == (ebrim.SUCCESS if valid else ebrim.FAILURE)
    assert answer.action == ebrim.ITI42_RESPONSE_ACTION
    assert_valid_message(answer, official_iti_schema())


# SOAP faults ---------------------------------------------------------------------------------------

def _envelope_with(header: str, body: str) -> bytes:
    return (f'<env:Envelope xmlns:env="{SOAP}" xmlns:wsa="{WSA}"><env:Header>{header}</env:Header>'
            f"<env:Body>{body}</env:Body></env:Envelope>").encode()


_ACTION = f'<wsa:Action>{ebrim.ITI43_ACTION}</wsa:Action><wsa:MessageID>urn:uuid:{uuid.uuid4()}</wsa:MessageID>'
_RETRIEVE = f'<xds:RetrieveDocumentSetRequest xmlns:xds="{ebrim.XDS}"/>'
FAULT_REQUESTS = {
    # name: (request body, expected fault code, expected subcode local name)
    "wrong-body": (_envelope_with(_ACTION, '<other xmlns="urn:x"/>'), "Sender", None),
    "unknown-action": (_envelope_with("<wsa:Action>urn:nothing</wsa:Action>", _RETRIEVE), "Sender",
                       "ActionNotSupported"),
    "missing-action": (_envelope_with("", _RETRIEVE), "Sender", "MessageAddressingHeaderRequired"),
    "must-understand": (_envelope_with(
        _ACTION + '<v:Secret xmlns:v="urn:vendor" env:mustUnderstand="true">x</v:Secret>', _RETRIEVE),
        "MustUnderstand", None),
    "soap11": (b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
               + _RETRIEVE.encode() + b"</s:Body></s:Envelope>", "VersionMismatch", None),
    "not-xml": (b"<env:Envelope", "Sender", None),
}


FAULT_CASES = list(FAULT_REQUESTS)


@pytest.mark.parametrize("name", FAULT_CASES)
def test_soap_fault_is_a_valid_soap12_envelope(client, name):
    request, expected_code, expected_subcode = FAULT_REQUESTS[name]
    answer = post(client, request)

    assert answer.status_code == (400 if expected_code == "Sender" else 500)
    assert answer.fault_code() == (expected_code, expected_subcode)
    assert_valid_message(answer)


# ITI-42 requests the repository sends to an external registry ---------------------------------

@pytest.fixture(scope="module")
def registry_stub():
    """A registry on 127.0.0.1 that records each request as received and answers Success."""
    received: list[tuple[str, bytes]] = []

    async def endpoint(request):
        received.append((request.headers["content-type"], await request.body()))
        answer = corpus.wrap_in_envelope(
            f'<rs:RegistryResponse xmlns:rs="{ebrim.RS}" status="{ebrim.SUCCESS}"/>'.encode(),
            ebrim.ITI42_RESPONSE_ACTION)
        return Response(answer, media_type="application/soap+xml")

    with serve(Starlette(routes=[Route("/registry", endpoint, methods=["POST"])])) as base:
        yield f"{base}/registry", received


def test_iti42_request_sent_by_the_repository_is_valid(tmp_path, registry_stub):
    url, received = registry_stub
    received.clear()
    settings = settings_for(tmp_path, repository__registry_url=url, registry__embedded=False)
    unique_id = new_unique_id()
    with TestClient(create_app(settings)) as test_client:
        assert post(test_client, provide_and_register(unique_id, b"to register")).status == ebrim.SUCCESS

    ((content_type, body),) = received
    assert content_type.startswith("application/soap+xml"), "ITI-42 is Simple SOAP"
    request = captured(content_type, body)
    assert request.action == ebrim.ITI42_ACTION
    header = request.envelope.find(f"{{{SOAP}}}Header")
    assert header.findtext(f"{{{WSA}}}ReplyTo/{{{WSA}}}Address") == "http://www.w3.org/2005/08/addressing/anonymous"
    assert header.findtext(f"{{{WSA}}}MessageID")
    assert header.findtext(f"{{{WSA}}}To") == url
    assert request.body.tag == ebrim.q("lcm", "SubmitObjectsRequest")
    # The repository adds what only it knows before registering.
    extrinsic = next(request.body.iter(ebrim.q("rim", "ExtrinsicObject")))
    slots = {s.get("name"): s.findtext(f".//{ebrim.q('rim', 'Value')}") for s in extrinsic.findall(ebrim.q("rim", "Slot"))}
    assert slots["size"] == "11"
    assert slots["repositoryUniqueId"] == settings.repository.unique_id
    assert len(slots["hash"]) == 40
    assert_valid_message(request, official_iti_schema())


# The publisher's ProvideAndRegister (RAD-68) to an external repository ------------------------

@pytest.fixture(scope="module")
def repository_stub():
    received: list[tuple[str, bytes]] = []

    async def endpoint(request):
        received.append((request.headers["content-type"], await request.body()))
        answer = corpus.wrap_in_envelope(
            f'<rs:RegistryResponse xmlns:rs="{ebrim.RS}" status="{ebrim.SUCCESS}"/>'.encode(),
            ebrim.ITI41_RESPONSE_ACTION)
        return Response(answer, media_type="application/soap+xml")

    with serve(Starlette(routes=[Route("/repository", endpoint, methods=["POST"])])) as base:
        yield f"{base}/repository", received


def test_kos_provide_and_register_sent_by_the_publisher_is_valid(tmp_path, repository_stub):
    import pydicom

    from dicom.importer import import_paths
    from xds.jobs import JobQueue, ManifestLedger
    from xds.publisher import Publisher
    from xds.runtime import open_archive
    from xds.service import Components

    url, received = repository_stub
    received.clear()
    settings = settings_for(tmp_path, source__repository_url=url, source__profile="nist-ids",
                            source__unique_id="1.3.6.1.4.1.21367.13.80.110")
    components = Components(settings)
    archive = open_archive(settings, components.engine, components.blobstore)
    assert import_paths([DEPT022], archive).stored == 1
    study_uid = str(pydicom.dcmread(next(DEPT022.iterdir()), stop_before_pixels=True).StudyInstanceUID)
    publisher = Publisher(settings, archive, components.blobstore, JobQueue(components.engine),
                          ManifestLedger(components.engine), repository=components.repository)

    publication = asyncio.run(publisher.publish(study_uid))

    assert publication.status == ebrim.SUCCESS
    ((content_type, body),) = received
    assert content_type.startswith("multipart/related")
    assert 'type="application/xop+xml"' in content_type and 'start-info="application/soap+xml"' in content_type
    request = captured(content_type, body)
    assert request.action == ebrim.ITI41_ACTION
    assert request.body.tag == ebrim.q("xds", "ProvideAndRegisterDocumentSetRequest")
    (document,) = request.body.findall(ebrim.q("xds", "Document"))
    assert document.find(f"{{{ebrim.XOP}}}Include") is not None, "the KOS travels as an XOP attachment"
    kos = with_inline_documents(document, request.attachments).text
    assert base64.b64decode(kos)[128:132] == b"DICM"
    assert_valid_message(request, official_iti_schema())


# RAD-69 responses -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def imaging_source(tmp_path_factory):
    if not HAS_RAD69:
        pytest.skip("xds/rad69.py (the RAD-69 Imaging Document Source) is not in the tree yet")
    import pydicom

    from dicom.importer import import_paths
    from xds.runtime import build_app

    settings = settings_for(tmp_path_factory.mktemp("rad69"))
    app = build_app(settings, start_dicom=False, start_worker=False)
    assert import_paths([DEPT022], app.state.components.archive).stored == 1
    header = pydicom.dcmread(next(DEPT022.iterdir()), stop_before_pixels=True)
    with TestClient(app) as test_client:
        yield test_client, settings, header


def rad69_request(header, source_unique_id: str, *instance_uids: str) -> bytes:
    documents = "".join(
        f"<xds:DocumentRequest><xds:RepositoryUniqueId>{source_unique_id}</xds:RepositoryUniqueId>"
        f"<xds:DocumentUniqueId>{uid}</xds:DocumentUniqueId></xds:DocumentRequest>" for uid in instance_uids)
    body = (f'<xdsi:RetrieveImagingDocumentSetRequest xmlns:xdsi="{ebrim.XDSI}" xmlns:xds="{ebrim.XDS}">'
            f'<xdsi:StudyRequest studyInstanceUID="{header.StudyInstanceUID}">'
            f'<xdsi:SeriesRequest seriesInstanceUID="{header.SeriesInstanceUID}">{documents}</xdsi:SeriesRequest>'
            "</xdsi:StudyRequest><xdsi:TransferSyntaxUIDList>"
            f"<xdsi:TransferSyntaxUID>{header.file_meta.TransferSyntaxUID}</xdsi:TransferSyntaxUID>"
            "</xdsi:TransferSyntaxUIDList></xdsi:RetrieveImagingDocumentSetRequest>")
    return corpus.wrap_in_envelope(body.encode(), ebrim.RAD69_ACTION)


@pytest.mark.parametrize("case", ["success", "partial", "failure"])
def test_rad69_response_is_valid(imaging_source, case):
    test_client, settings, header = imaging_source
    known, unknown = str(header.SOPInstanceUID), new_unique_id()
    uids = {"success": [known], "partial": [known, unknown], "failure": [unknown]}[case]
    envelope = rad69_request(header, settings.source.unique_id, *uids)
    answer = post_mtom(test_client, envelope, ebrim.RAD69_ACTION, path="/xdsi/imaging-source")

    expected = {"success": ebrim.SUCCESS, "partial": ebrim.PARTIAL_SUCCESS, "failure": ebrim.FAILURE}[case]
    assert answer.status == expected
    assert answer.action == ebrim.ITI43_RESPONSE_ACTION, "RAD-69 answers with the ITI-43 response action"
    # The answer is the ITI-43 RetrieveDocumentSetResponse (RAD-69 reuses it).
    assert answer.body.tag == ebrim.q("xds", "RetrieveDocumentSetResponse")
    assert_valid_message(answer, official_iti_schema())


# The oracles are not blind -------------------------------------------------------------------------

def test_a_broken_response_is_refused_by_the_schemas(client, stored):
    answer = post(client, retrieve_request(client.settings.repository.unique_id, stored))
    answer.registry_response().attrib.pop("status")
    assert not official_iti_schema().validate(etree.fromstring(etree.tostring(answer.body)))

    # An EndpointReference without its Address is refused by the WS-Addressing schema.
    etree.SubElement(answer.envelope.find(f"{{{SOAP}}}Header"), f"{{{WSA}}}ReplyTo")
    assert not envelope_and_addressing_schema().validate(answer.envelope)
