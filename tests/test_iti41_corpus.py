"""ITI-41 and ITI-43 against the public sample messages, as stored and with CRLF line ends.

Each case carries the verdict that the corpus's SOURCES.md gives for a Document Repository.
The registry behind the repository is a stub HTTP server that records the ITI-42 it receives
and accepts it (the verdicts are the repository's; no real XDS registry can run here, and the
embedded one has its own tests). Accepted submissions are retrieved by ITI-43 and must come back
byte for byte with their mimeType.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import hashlib

import pytest
from lxml import etree
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from tests import corpus
from tests.repository_helpers import SOAP, read_answer, retrieve_request, settings_for
from tests.servers import serve
from xds import ebrim
from xds.service import create_app

REPOSITORY = "/xds/repository"


@pytest.fixture(scope="module")
def registry():
    """A registry stub on 127.0.0.1 that records each ITI-42 body and answers Success."""
    received: list[etree._Element] = []

    async def endpoint(request):
        envelope = etree.fromstring(await request.body())
        received.append(envelope.find(f"{{{SOAP}}}Body")[0])
        answer = corpus.wrap_in_envelope(
            f'<rs:RegistryResponse xmlns:rs="{ebrim.RS}" status="{ebrim.SUCCESS}"/>'.encode(),
            ebrim.ITI42_RESPONSE_ACTION)
        return Response(answer, media_type="application/soap+xml")

    with serve(Starlette(routes=[Route("/registry", endpoint, methods=["POST"])])) as base:
        yield f"{base}/registry", received


@pytest.fixture
def client(tmp_path, database_url, registry):
    url, received = registry
    received.clear()
    settings = settings_for(tmp_path, storage__database_url=database_url, repository__registry_url=url,
                            registry__embedded=False)
    with TestClient(create_app(settings)) as test_client:
        test_client.settings = settings
        test_client.registered = received
        yield test_client


def submit(client, content_type: str, body: bytes):
    return read_answer(client.post(REPOSITORY, content=body, headers={"Content-Type": content_type}))


def document_entries(content_type: str, body: bytes) -> dict[str, str]:
    """uniqueId -> ExtrinsicObject id of the DocumentEntries in a request (read independently)."""
    if content_type.startswith("multipart/"):
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
        root = next(message.iter_parts()).get_payload(decode=True)
    else:
        root = body
    tree = etree.fromstring(root.strip())
    entries = {}
    for extrinsic in tree.iter(ebrim.q("rim", "ExtrinsicObject")):
        for identifier in extrinsic.findall(ebrim.q("rim", "ExternalIdentifier")):
            if identifier.get("identificationScheme") == ebrim.DE_UNIQUE_ID:
                entries[identifier.get("value")] = extrinsic.get("id")
    return entries


ACCEPTED = {
    "xop": lambda crlf: corpus.body_with_testplan("nist-PnrXop-Xop-body.txt", "nist-PnrXop-Xop-testplan.xml", crlf),
    "noxop": lambda crlf: corpus.body_with_testplan("nist-PnrXop-NoXop-body.txt", "nist-PnrXop-Xop-testplan.xml", crlf),
    "encoded-url": lambda crlf: corpus.body_with_testplan("nist-PnrXop-encodedURL-body.txt",
                                                          "nist-PnrXop-Xop-testplan.xml", crlf),
    "wcf-dicom": lambda crlf: corpus.body_with_testplan("nist-PnrXop-dicom-body.txt",
                                                        "nist-PnrXop-dicom-testplan.xml", crlf),
    "axis2-padding": lambda crlf: corpus.http_request("nist-http-mtom-pnr.txt", crlf),
    "selftest-socket": lambda crlf: corpus.http_request("nist-selftest-socket-request.txt", crlf),
    "wcf-lowercase-headers": corpus.boundary_test_request,
    "gematik": lambda crlf: (corpus.GEMATIK_CONTENT_TYPE,
                             corpus.to_crlf(corpus.read("gematik-provideandregister.xop")) if crlf
                             else corpus.read("gematik-provideandregister.xop")),
}


@pytest.mark.parametrize("crlf", [False, True], ids=["as-stored", "crlf"])
@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_accepted_submissions_are_stored_registered_and_retrievable(client, case, crlf):
    content_type, body = ACCEPTED[case](crlf)
    answer = submit(client, content_type, body)

    assert answer.status_code == 200
    assert answer.is_mtom, "an ITI-41 response is MTOM even without attachments"
    assert answer.action == ebrim.ITI41_RESPONSE_ACTION
    assert answer.status == ebrim.SUCCESS, answer.errors and etree.tostring(answer.registry_response())

    entries = document_entries(content_type, body)
    retrieved = read_answer(client.post(
        REPOSITORY, content=retrieve_request(client.settings.repository.unique_id, *entries),
        headers={"Content-Type": "application/soap+xml"}))
    assert retrieved.status == ebrim.SUCCESS
    assert sorted(retrieved.documents()) == sorted(entries)


EXPECTED_DOCUMENTS = {
    # case: (crlf?, size, sha1) of the one document, from SOURCES.md
    ("xop", False): (36, "e543712c0e10501972de13a5bfcbe826c49feb75"),
    ("xop", True): (40, "e4f4de4023c5109e597922533a172c6449aacbe7"),
    ("noxop", False): (38, "27e60f9f5173903c2fa907baaaeb7af819913116"),
    ("noxop", True): (38, "27e60f9f5173903c2fa907baaaeb7af819913116"),
}


@pytest.mark.parametrize("case, crlf", sorted(EXPECTED_DOCUMENTS))
def test_hash_and_size_are_those_of_the_exact_bytes(client, case, crlf):
    content_type, body = ACCEPTED[case](crlf)
    assert submit(client, content_type, body).status == ebrim.SUCCESS
    (unique_id,) = document_entries(content_type, body)

    answer = read_answer(client.post(
        REPOSITORY, content=retrieve_request(client.settings.repository.unique_id, unique_id),
        headers={"Content-Type": "application/soap+xml"}))
    mime_type, data = answer.documents()[unique_id]
    assert (len(data), hashlib.sha1(data).hexdigest()) == EXPECTED_DOCUMENTS[(case, crlf)]
    assert mime_type == "text/plain"

    (submit_objects,) = client.registered
    assert submit_objects.tag == ebrim.q("lcm", "SubmitObjectsRequest")
    entry = registered_slots(submit_objects)
    assert entry["hash"] == [hashlib.sha1(data).hexdigest()] and entry["size"] == [str(len(data))]
    assert entry["repositoryUniqueId"] == [client.settings.repository.unique_id]


def registered_slots(submit_objects: etree._Element) -> dict[str, list[str]]:
    """The slots of the one DocumentEntry of an ITI-42 the registry received."""
    (extrinsic,) = submit_objects.iter(ebrim.q("rim", "ExtrinsicObject"))
    return {slot.get("name"): [v.text for v in slot.iter(ebrim.q("rim", "Value"))]
            for slot in extrinsic.findall(ebrim.q("rim", "Slot"))}


def test_wcf_dicom_manifest_is_stored_unchanged(client):
    content_type, body = ACCEPTED["wcf-dicom"](False)
    assert submit(client, content_type, body).status == ebrim.SUCCESS
    (unique_id,) = document_entries(content_type, body)
    answer = read_answer(client.post(
        REPOSITORY, content=retrieve_request(client.settings.repository.unique_id, unique_id),
        headers={"Content-Type": "application/soap+xml"}))
    mime_type, data = answer.documents()[unique_id]
    assert mime_type == "application/dicom"
    assert len(data) == 6090 and data[128:132] == b"DICM"

    # The vendor's extra slots travel on to the registry unchanged.
    slots = registered_slots(client.registered[0])
    assert any(name.startswith("urn:acuo:") for name in slots)


# Rejections -----------------------------------------------------------------------------------

@pytest.mark.parametrize("crlf", [False, True], ids=["as-stored", "crlf"])
def test_simple_soap_with_dangling_xop_include_is_refused(client, crlf):
    content_type, body = corpus.http_request("nist-http-simple.txt", crlf)
    answer = submit(client, content_type, body)
    if answer.body.tag.endswith("Fault"):
        assert answer.fault_code()[0] == "Sender" and answer.status_code == 400
    else:
        assert answer.status == ebrim.FAILURE and "XDSMissingDocument" in answer.error_codes
    assert_nothing_stored(client)


def test_missing_ws_addressing_is_a_fault(client):
    answer = submit(client, "application/soap+xml", corpus.read("nist-soap-noaction-pnr.xml"))
    assert answer.status_code == 400
    assert answer.fault_code() == ("Sender", "MessageAddressingHeaderRequired")


def test_header_after_body_is_a_sender_fault(client):
    answer = submit(client, "application/soap+xml", corpus.read("nist-soap-pnr-soap-order.xml"))
    assert answer.status_code == 400 and answer.fault_code()[0] == "Sender"
    assert_nothing_stored(client)


def test_bad_uplink_without_documents_is_missing_document(client):
    envelope = corpus.wrap_in_envelope(corpus.read("nist-pnr-bad-uplink.xml"), ebrim.ITI41_ACTION)
    answer = submit(client, *corpus.mtom_single_part(envelope, ebrim.ITI41_ACTION))
    assert answer.status == ebrim.FAILURE
    assert answer.error_codes.count("XDSMissingDocument") == 2
    assert_nothing_stored(client)


def test_bad_uplink_with_documents_is_a_metadata_error(client):
    tree = etree.fromstring(corpus.read("nist-pnr-bad-uplink.xml").strip())
    for extrinsic in tree.iter(ebrim.q("rim", "ExtrinsicObject")):
        document = etree.SubElement(tree, ebrim.q("xds", "Document"), id=extrinsic.get("id"))
        document.text = base64.b64encode(b"some text").decode()
    envelope = corpus.wrap_in_envelope(etree.tostring(tree), ebrim.ITI41_ACTION)
    answer = submit(client, *corpus.mtom_single_part(envelope, ebrim.ITI41_ACTION))
    assert answer.status == ebrim.FAILURE
    assert set(answer.error_codes) & {"XDSRepositoryMetadataError", "XDSRegistryMetadataError"}
    assert any("Document011" in (e.get("codeContext") + (e.get("location") or "")) for e in answer.errors)
    assert_nothing_stored(client)


def test_wrong_hash_and_size_are_refused_before_the_registry(client):
    envelope = corpus.wrap_in_envelope(corpus.read("ipf-continua-ProvideAndRegisterDocumentSet.xml"),
                                       ebrim.ITI41_ACTION)
    answer = submit(client, "application/soap+xml", envelope)
    assert answer.status == ebrim.FAILURE
    assert answer.error_codes == ["XDSRepositoryMetadataError", "XDSRepositoryMetadataError"]
    contexts = " ".join(e.get("codeContext") for e in answer.errors)
    assert "4eeb62bd3903d5f0aac471d9afbb9c2b374d7a79" in contexts and "28011" in contexts
    assert_nothing_stored(client)


def test_metadata_in_wrong_namespaces_is_refused(client):
    metadata = corpus.read("nist-IDS-DEPT099-a-metadata.xml")
    body = (b'<xds:ProvideAndRegisterDocumentSetRequest xmlns:xds="urn:ihe:iti:xds-b:2007">'
            + metadata.split(b"?>", 1)[-1] + b"</xds:ProvideAndRegisterDocumentSetRequest>")
    answer = submit(client, *corpus.mtom_single_part(corpus.wrap_in_envelope(body, ebrim.ITI41_ACTION),
                                                     ebrim.ITI41_ACTION))
    if answer.body.tag.endswith("Fault"):
        assert answer.fault_code()[0] == "Sender"
    else:
        assert answer.status == ebrim.FAILURE
    assert_nothing_stored(client)


def assert_nothing_stored(client):
    components = client.app.state.components
    with components.engine.connect() as conn:
        from sqlalchemy import func, select

        from xds.repository_store import repository_document

        assert conn.execute(select(func.count()).select_from(repository_document)).scalar() == 0
    blobs = components.blobstore.root / "blobs"
    assert not blobs.exists() or not any(p.is_file() for p in blobs.rglob("*"))
