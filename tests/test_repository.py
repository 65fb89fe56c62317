"""Document Repository behaviour beyond the corpus: resubmission, the registry's answers relayed,
an unreachable registry, ITI-43 status rules.

The external registry here is a stub HTTP server that replays answers recorded from real
registries (NIST toolkit): no real XDS registry can run on this machine.
"""

from __future__ import annotations

import base64
import uuid

import pytest
from lxml import etree
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from tests import corpus
from tests.repository_helpers import read_answer, retrieve_request, settings_for
from tests.servers import free_port, serve
from xds import ebrim
from xds.service import create_app

REPOSITORY = "/xds/repository"
PATIENT = "P42^^^&1.2.3.9&ISO"


def provide_and_register(unique_id: str, content: bytes, *, mime_type="text/plain", hash_=None, size=None,
                         ss_unique_id=None) -> bytes:
    """A minimal valid ITI-41 request with one inline document."""
    extra = ""
    if hash_ is not None:
        extra += slot("hash", hash_)
    if size is not None:
        extra += slot("size", size)
    ss_unique_id = ss_unique_id or f"2.25.{uuid.uuid4().int}"
    body = f"""<xds:ProvideAndRegisterDocumentSetRequest xmlns:xds="{ebrim.XDS}" xmlns:lcm="{ebrim.LCM}"
        xmlns:rim="{ebrim.RIM}"><lcm:SubmitObjectsRequest><rim:RegistryObjectList>
      <rim:ExtrinsicObject id="Document01" mimeType="{mime_type}" objectType="{ebrim.DOCUMENT_ENTRY_STABLE}">
        {slot("creationTime", "20240105101500")}{slot("languageCode", "en-US")}
        {slot("sourcePatientId", "L123^^^&amp;1.2.3.4&amp;ISO")}{extra}
        {code("cl1", "Document01", ebrim.DE_CLASS_CODE, "IMAGES", "1.3.6.1.4.1.19376.1.2.6.1")}
        {code("cl2", "Document01", ebrim.DE_CONFIDENTIALITY_CODE, "N", "2.16.840.1.113883.5.25")}
        {code("cl3", "Document01", ebrim.DE_FORMAT_CODE, "urn:ihe:iti:xds:2017:mimeTypeSufficient", "1.3.6.1.4.1.19376.1.2.3")}
        {code("cl4", "Document01", ebrim.DE_HEALTHCARE_FACILITY_TYPE_CODE, "22232009", "2.16.840.1.113883.6.96")}
        {code("cl5", "Document01", ebrim.DE_PRACTICE_SETTING_CODE, "394914008", "2.16.840.1.113883.6.96")}
        {code("cl6", "Document01", ebrim.DE_TYPE_CODE, "18748-4", "2.16.840.1.113883.6.1")}
        {ident("ei1", "Document01", ebrim.DE_PATIENT_ID, PATIENT.replace("&", "&amp;"), "XDSDocumentEntry.patientId")}
        {ident("ei2", "Document01", ebrim.DE_UNIQUE_ID, unique_id, "XDSDocumentEntry.uniqueId")}
      </rim:ExtrinsicObject>
      <rim:RegistryPackage id="SubmissionSet01">
        {slot("submissionTime", "20240105101600")}
        {code("cl7", "SubmissionSet01", ebrim.SS_CONTENT_TYPE_CODE, "18748-4", "2.16.840.1.113883.6.1")}
        {ident("ei3", "SubmissionSet01", ebrim.SS_UNIQUE_ID, ss_unique_id, "XDSSubmissionSet.uniqueId")}
        {ident("ei4", "SubmissionSet01", ebrim.SS_SOURCE_ID, "1.2.3.4.5", "XDSSubmissionSet.sourceId")}
        {ident("ei5", "SubmissionSet01", ebrim.SS_PATIENT_ID, PATIENT.replace("&", "&amp;"), "XDSSubmissionSet.patientId")}
      </rim:RegistryPackage>
      <rim:Classification id="cl8" classifiedObject="SubmissionSet01" classificationNode="{ebrim.SUBMISSION_SET_NODE}"/>
      <rim:Association id="as1" associationType="{ebrim.HAS_MEMBER}" sourceObject="SubmissionSet01"
          targetObject="Document01">{slot("SubmissionSetStatus", "Original")}</rim:Association>
    </rim:RegistryObjectList></lcm:SubmitObjectsRequest>
    <xds:Document id="Document01">{base64.b64encode(content).decode()}</xds:Document>
    </xds:ProvideAndRegisterDocumentSetRequest>"""
    return corpus.wrap_in_envelope(body.encode(), ebrim.ITI41_ACTION)


def slot(name, value):
    return f'<rim:Slot name="{name}"><rim:ValueList><rim:Value>{value}</rim:Value></rim:ValueList></rim:Slot>'


def code(id_, owner, scheme, value, coding_scheme):
    return (f'<rim:Classification id="{id_}" classificationScheme="{scheme}" classifiedObject="{owner}" '
            f'nodeRepresentation="{value}">{slot("codingScheme", coding_scheme)}'
            f'<rim:Name><rim:LocalizedString value="{value}"/></rim:Name></rim:Classification>')


def ident(id_, owner, scheme, value, name):
    return (f'<rim:ExternalIdentifier id="{id_}" identificationScheme="{scheme}" registryObject="{owner}" '
            f'value="{value}"><rim:Name><rim:LocalizedString value="{name}"/></rim:Name></rim:ExternalIdentifier>')


@pytest.fixture
def client(tmp_path, database_url):
    settings = settings_for(tmp_path, storage__database_url=database_url)
    with TestClient(create_app(settings)) as test_client:
        test_client.settings = settings
        yield test_client


def post(client, envelope: bytes, content_type="application/soap+xml"):
    return read_answer(client.post(REPOSITORY, content=envelope, headers={"Content-Type": content_type}))


def retrieve(client, *unique_ids, repository=None, home=None):
    repository = repository or client.settings.repository.unique_id
    return post(client, retrieve_request(repository, *unique_ids, home=home))


def test_plain_soap_request_gets_a_plain_soap_answer_with_inline_documents(client):
    assert post(client, provide_and_register("1.2.3.1", b"hello")).status == ebrim.SUCCESS
    answer = retrieve(client, "1.2.3.1")
    assert not answer.is_mtom
    assert answer.documents() == {"1.2.3.1": ("text/plain", b"hello")}


def test_mtom_request_gets_an_mtom_answer(client):
    assert post(client, provide_and_register("1.2.3.1", b"hello")).status == ebrim.SUCCESS
    envelope = retrieve_request(client.settings.repository.unique_id, "1.2.3.1")
    content_type, body = corpus.mtom_single_part(envelope, ebrim.ITI43_ACTION)
    answer = post(client, body, content_type)
    assert answer.is_mtom and answer.documents() == {"1.2.3.1": ("text/plain", b"hello")}


def test_identical_resubmission_is_accepted_and_different_bytes_are_refused(client):
    assert post(client, provide_and_register("1.2.3.1", b"first")).status == ebrim.SUCCESS
    assert post(client, provide_and_register("1.2.3.1", b"first")).status == ebrim.SUCCESS

    answer = post(client, provide_and_register("1.2.3.1", b"other"))
    assert answer.status == ebrim.FAILURE
    assert answer.error_codes in (["XDSNonIdenticalHash"], ["XDSNonIdenticalSize"])
    assert answer.errors[0].get("location") == "1.2.3.1"
    assert retrieve(client, "1.2.3.1").documents()["1.2.3.1"][1] == b"first"


def test_supplied_hash_and_size_matching_the_bytes_are_accepted(client):
    import hashlib

    answer = post(client, provide_and_register("1.2.3.1", b"abc", hash_=hashlib.sha1(b"abc").hexdigest().upper(),
                                               size="3"))
    assert answer.status == ebrim.SUCCESS


def test_registry_refusal_leaves_nothing_retrievable(client):
    # The same submission set uniqueId twice: the embedded registry refuses the second.
    assert post(client, provide_and_register("1.2.3.1", b"one", ss_unique_id="1.9.9")).status == ebrim.SUCCESS
    answer = post(client, provide_and_register("1.2.3.2", b"two", ss_unique_id="1.9.9"))
    assert answer.status == ebrim.FAILURE and "XDSDuplicateUniqueIdInRegistry" in answer.error_codes
    missing = retrieve(client, "1.2.3.2")
    assert missing.status == ebrim.FAILURE and missing.error_codes == ["XDSDocumentUniqueIdError"]


def test_retrieve_status_rules(client):
    assert post(client, provide_and_register("1.2.3.1", b"one")).status == ebrim.SUCCESS
    partial = retrieve(client, "1.2.3.1", "9.9.9")
    assert partial.status == ebrim.PARTIAL_SUCCESS
    assert list(partial.documents()) == ["1.2.3.1"]
    assert [(e.get("errorCode"), e.get("location")) for e in partial.errors] == [("XDSDocumentUniqueIdError", "9.9.9")]

    unknown_repository = retrieve(client, "1.2.3.1", repository="1.2.3.4.5.6.7")
    assert unknown_repository.status == ebrim.FAILURE
    assert unknown_repository.error_codes == ["XDSUnknownRepositoryId"]
    assert unknown_repository.documents() == {}


def test_home_community_id_is_echoed(client):
    assert post(client, provide_and_register("1.2.3.1", b"one")).status == ebrim.SUCCESS
    answer = retrieve(client, "1.2.3.1", home="urn:oid:1.2.3.77")
    response = answer.body.find(ebrim.q("xds", "DocumentResponse"))
    assert response.findtext(ebrim.q("xds", "HomeCommunityId")) == "urn:oid:1.2.3.77"


def test_two_documents_for_two_repositories_in_one_request(client):
    """corpus 19: WCF-style ITI-43 naming repositories that are not ours."""
    answer = post(client, corpus.read("nist-soap-ret-req.xml"))
    assert answer.status == ebrim.FAILURE
    assert answer.error_codes == ["XDSUnknownRepositoryId", "XDSUnknownRepositoryId"]
    assert all(e.get("location") for e in answer.errors)


# An external registry ---------------------------------------------------------------------------

def recorded_registry(answer_body: bytes, status_code: int = 200):
    async def endpoint(request):
        await request.body()
        return Response(answer_body, status_code=status_code, media_type="application/soap+xml")

    return Starlette(routes=[Route("/registry", endpoint, methods=["POST"])])


def external_client(tmp_path, registry_url):
    settings = settings_for(tmp_path, repository__registry_url=registry_url, registry__embedded=False)
    return TestClient(create_app(settings)), settings


def test_registry_errors_are_relayed_unchanged(tmp_path):
    with serve(recorded_registry(corpus.read("nist-Bill-msg.txt"))) as base:
        client, settings = external_client(tmp_path, f"{base}/registry")
        with client:
            client.settings = settings
            answer = post(client, provide_and_register("1.2.3.1", b"one"))
            assert answer.status == ebrim.FAILURE
            assert answer.error_codes == ["XDSRegistryMetadataError"] * 6
            recorded = etree.fromstring(corpus.read("nist-Bill-msg.txt"))
            expected = [(e.get("codeContext"), e.get("severity")) for e in recorded.iter(ebrim.q("rs", "RegistryError"))]
            assert [(e.get("codeContext"), e.get("severity")) for e in answer.errors] == expected
            assert retrieve(client, "1.2.3.1").status == ebrim.FAILURE


def test_success_with_an_error_inside_is_not_success(tmp_path):
    recorded = corpus.wrap_in_envelope(corpus.read("nist-regresp-suc-err.xml"), ebrim.ITI42_RESPONSE_ACTION)
    with serve(recorded_registry(recorded)) as base:
        client, settings = external_client(tmp_path, f"{base}/registry")
        with client:
            client.settings = settings
            answer = post(client, provide_and_register("1.2.3.1", b"one"))
            assert answer.status == ebrim.FAILURE and "XDSUnknownPatientId" in answer.error_codes
            assert retrieve(client, "1.2.3.1").status == ebrim.FAILURE


def test_unreachable_registry_is_registry_not_available(tmp_path):
    client, settings = external_client(tmp_path, f"http://127.0.0.1:{free_port()}/registry")
    with client:
        client.settings = settings
        answer = post(client, provide_and_register("1.2.3.1", b"one"))
        assert answer.status == ebrim.FAILURE and answer.error_codes == ["XDSRegistryNotAvailable"]
        assert retrieve(client, "1.2.3.1").status == ebrim.FAILURE


def test_external_entity_in_a_submission_reads_no_file(client, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    envelope = provide_and_register("1.2.3.1", b"x").decode()
    envelope = (f'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file://{secret}">]>'
                + envelope.replace("en-US", "&x;"))
    response = client.post(REPOSITORY, content=envelope.encode(), headers={"Content-Type": "application/soap+xml"})
    answer = read_answer(response)
    assert response.status_code == 400 and answer.fault_code()[0] == "Sender"
    assert b"TOP-SECRET-VALUE" not in response.content
    assert retrieve(client, "1.2.3.1").status == ebrim.FAILURE


def test_abandoned_pending_submission_is_cleaned_up(client):
    """A process that died between storing and registering leaves a pending row and a blob."""
    from datetime import timedelta

    components = client.app.state.components
    store = components.repository_store
    assert store.reserve("1.2.3.9", "text/plain", "0" * 40, 3, submission="dead") is None
    with components.blobstore.spool() as spool:
        spool.write(b"abc")
        components.blobstore.commit(spool, store.get("1.2.3.9").blob_key)

    assert components.repository.clean_up_abandoned(older_than=timedelta(hours=1)) == 0  # too recent
    assert components.repository.clean_up_abandoned(older_than=timedelta(seconds=-1)) == 1
    assert store.get("1.2.3.9") is None
    assert post(client, provide_and_register("1.2.3.9", b"fresh")).status == ebrim.SUCCESS
