"""zeep as an independent SOAP client of the running service, over real HTTP on 127.0.0.1.

zeep loads each WSDL from the service itself (``GET <endpoint>?wsdl``; the XSD imports resolve
against ``/schemas/`` on the same server), builds the requests from the types it found there and
sends them: ITI-41 as MTOM with the document as an XOP attachment, ITI-43, ITI-18 FindDocuments
and, when the Imaging Document Source is present, RAD-69. zeep's limits are worked around in
``tests.zeep_support``, never in the server.
"""

from __future__ import annotations

import importlib.util
import uuid

import pytest
import zeep

from tests.conftest import NIST_IDS
from tests.repository_helpers import read_answer, settings_for
from tests.servers import serve
from tests.zeep_support import MtomTransport, RecordingTransport, localized, slot
from xds import ebrim
from xds.service import create_app

PATIENT = "ZEEP1^^^&1.2.3.9&ISO"
# Bytes that zeep's own MTOM reader would damage: CR/LF at both ends, and every byte value.
DOCUMENT = b"\r\n" + bytes(range(256)) + b"zeep test document\r\n"

HAS_RAD69 = importlib.util.find_spec("xds.rad69") is not None
DEPT022 = NIST_IDS / "IDS-DEPT022-a" / "images"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """The service with its embedded registry on SQLite, on a free port of 127.0.0.1."""
    tmp_path = tmp_path_factory.mktemp("zeep")
    settings = settings_for(tmp_path, storage__database_url=f"sqlite:///{tmp_path / 'xdsi.db'}")
    with serve(create_app(settings)) as base:
        yield base, settings


def repository_client(base: str, transport=None) -> zeep.Client:
    return zeep.Client(wsdl=f"{base}/xds/repository?wsdl", transport=transport or RecordingTransport())


def code(client: zeep.Client, id_: str, owner: str, scheme: str, value: str, coding_scheme: str):
    classification = client.get_type(f"{{{ebrim.RIM}}}ClassificationType")
    return classification(id=id_, classificationScheme=scheme, classifiedObject=owner,
                          nodeRepresentation=value, Slot=[slot("codingScheme", coding_scheme)],
                          Name=localized(value))


def ident(client: zeep.Client, id_: str, owner: str, scheme: str, value: str, name: str):
    identifier = client.get_type(f"{{{ebrim.RIM}}}ExternalIdentifierType")
    return identifier(id=id_, registryObject=owner, identificationScheme=scheme, value=value,
                      Name=localized(name))


def provide_and_register_arguments(client: zeep.Client, unique_id: str, content: bytes) -> dict:
    """A SubmissionSet with one DocumentEntry, built from the types zeep read from our WSDL
    (the shape of tests/test_repository.py's provide_and_register)."""
    extrinsic_object = client.get_type(f"{{{ebrim.RIM}}}ExtrinsicObjectType")
    registry_package = client.get_type(f"{{{ebrim.RIM}}}RegistryPackageType")
    classification = client.get_type(f"{{{ebrim.RIM}}}ClassificationType")
    association = client.get_type(f"{{{ebrim.RIM}}}AssociationType1")
    document = client.get_type(f"{{{ebrim.XDS}}}DocumentType")

    entry = extrinsic_object(
        id="Document01", mimeType="application/octet-stream", objectType=ebrim.DOCUMENT_ENTRY_STABLE,
        Slot=[slot("creationTime", "20240105101500"), slot("languageCode", "en-US"),
              slot("sourcePatientId", "L123^^^&1.2.3.4&ISO")],
        Classification=[
            code(client, "cl1", "Document01", ebrim.DE_CLASS_CODE, "IMAGES", "1.3.6.1.4.1.19376.1.2.6.1"),
            code(client, "cl2", "Document01", ebrim.DE_CONFIDENTIALITY_CODE, "N", "2.16.840.1.113883.5.25"),
            code(client, "cl3", "Document01", ebrim.DE_FORMAT_CODE, "urn:ihe:iti:xds:2017:mimeTypeSufficient",
                 "1.3.6.1.4.1.19376.1.2.3"),
            code(client, "cl4", "Document01", ebrim.DE_HEALTHCARE_FACILITY_TYPE_CODE, "22232009",
                 "2.16.840.1.113883.6.96"),
            code(client, "cl5", "Document01", ebrim.DE_PRACTICE_SETTING_CODE, "394914008",
                 "2.16.840.1.113883.6.96"),
            code(client, "cl6", "Document01", ebrim.DE_TYPE_CODE, "18748-4", "2.16.840.1.113883.6.1"),
        ],
        ExternalIdentifier=[
            ident(client, "ei1", "Document01", ebrim.DE_PATIENT_ID, PATIENT, "XDSDocumentEntry.patientId"),
            ident(client, "ei2", "Document01", ebrim.DE_UNIQUE_ID, unique_id, "XDSDocumentEntry.uniqueId"),
        ],
    )
    submission_set = registry_package(
        id="SubmissionSet01",
        Slot=[slot("submissionTime", "20240105101600")],
        Classification=[code(client, "cl7", "SubmissionSet01", ebrim.SS_CONTENT_TYPE_CODE, "18748-4",
                             "2.16.840.1.113883.6.1")],
        ExternalIdentifier=[
            ident(client, "ei3", "SubmissionSet01", ebrim.SS_UNIQUE_ID, f"2.25.{uuid.uuid4().int}",
                  "XDSSubmissionSet.uniqueId"),
            ident(client, "ei4", "SubmissionSet01", ebrim.SS_SOURCE_ID, "1.2.3.4.5", "XDSSubmissionSet.sourceId"),
            ident(client, "ei5", "SubmissionSet01", ebrim.SS_PATIENT_ID, PATIENT, "XDSSubmissionSet.patientId"),
        ],
    )
    return {
        "SubmitObjectsRequest": {"RegistryObjectList": {"_value_1": [
            {"ExtrinsicObject": entry},
            {"RegistryPackage": submission_set},
            {"Classification": classification(id="cl8", classifiedObject="SubmissionSet01",
                                              classificationNode=ebrim.SUBMISSION_SET_NODE)},
            {"Association": association(id="as1", associationType=ebrim.HAS_MEMBER,
                                        sourceObject="SubmissionSet01", targetObject="Document01",
                                        Slot=[slot("SubmissionSetStatus", "Original")])},
        ]}},
        "Document": [document(id="Document01", _value_1=content)],
    }


def test_wsdl_and_schemas_load_from_the_service_with_its_own_address(service):
    base, _ = service
    loaded = []

    class Recording(RecordingTransport):
        def load(self, url):
            loaded.append(url)
            return super().load(url)

    client = repository_client(base, Recording())

    assert client.service._binding_options["address"] == f"{base}/xds/repository"
    assert f"{base}/schemas/xds-b.xsd" in loaded
    assert all(url.startswith(base) for url in loaded)


@pytest.fixture(scope="module")
def submitted(service):
    """One document provided and registered by zeep over MTOM: (unique id, zeep's result, transport)."""
    base, _ = service
    transport = MtomTransport()
    client = repository_client(base, transport)
    unique_id = f"2.25.{uuid.uuid4().int}"
    result = client.service["DocumentRepository_ProvideAndRegisterDocumentSet-b"](
        **provide_and_register_arguments(client, unique_id, DOCUMENT))
    return unique_id, result, transport


def test_iti41_from_zeep_over_mtom_succeeds(submitted):
    _unique_id, result, transport = submitted

    # The document really travelled as an XOP attachment, not inline.
    assert list(transport.sent_attachments.values()) == [DOCUMENT]
    assert transport.last_response.headers["content-type"].startswith("multipart/related")

    assert result.status == ebrim.SUCCESS, result.RegistryErrorList
    assert result.RegistryErrorList is None


@pytest.mark.parametrize("mtom", [False, True], ids=["plain", "mtom"])
def test_iti43_from_zeep_returns_the_same_bytes(service, submitted, mtom):
    base, settings = service
    unique_id, *_ = submitted
    transport = MtomTransport() if mtom else RecordingTransport()
    client = repository_client(base, transport)

    result = client.service.DocumentRepository_RetrieveDocumentSet(DocumentRequest=[
        {"RepositoryUniqueId": settings.repository.unique_id, "DocumentUniqueId": unique_id}])

    assert result.RegistryResponse.status == ebrim.SUCCESS
    (response,) = result.DocumentResponse
    assert response.DocumentUniqueId == unique_id
    assert response.RepositoryUniqueId == settings.repository.unique_id
    assert response.mimeType == "application/octet-stream"

    answer = read_answer(transport.last_response)
    assert answer.is_mtom == mtom, "the answer has the request's form"
    if mtom:
        # zeep's MTOM reader strips the CR/LF at both ends of the attachment; the package,
        # decoded by the standard library, holds the exact bytes.
        assert response.Document in (DOCUMENT, DOCUMENT.strip(b"\r\n"))
    else:
        assert response.Document == DOCUMENT
    assert answer.documents() == {unique_id: ("application/octet-stream", DOCUMENT)}


def test_iti43_from_zeep_for_an_unknown_document_is_a_failure(service):
    base, settings = service
    client = repository_client(base)

    result = client.service.DocumentRepository_RetrieveDocumentSet(DocumentRequest=[
        {"RepositoryUniqueId": settings.repository.unique_id, "DocumentUniqueId": "2.25.1"}])

    assert result.RegistryResponse.status == ebrim.FAILURE
    (error,) = result.RegistryResponse.RegistryErrorList.RegistryError
    assert error.errorCode == "XDSDocumentUniqueIdError"
    assert not result.DocumentResponse


def test_iti18_find_documents_from_zeep_finds_the_entry(service, submitted):
    base, _ = service
    unique_id, *_ = submitted
    client = zeep.Client(wsdl=f"{base}/xds/registry?wsdl", transport=RecordingTransport())

    result = client.service.DocumentRegistry_RegistryStoredQuery(
        ResponseOption={"returnType": "LeafClass", "returnComposedObjects": True},
        AdhocQuery={"id": ebrim.FIND_DOCUMENTS, "Slot": [
            slot("$XDSDocumentEntryPatientId", f"'{PATIENT}'"),
            slot("$XDSDocumentEntryStatus", f"('{ebrim.STATUS_APPROVED}')"),
        ]},
    )

    assert result.status == ebrim.SUCCESS
    # A choice list: each item is a dict keyed by the element name.
    entries = [item["ExtrinsicObject"] for item in result.RegistryObjectList._value_1
               if item.get("ExtrinsicObject") is not None]
    assert len(entries) == 1
    (entry,) = entries
    assert entry.status == ebrim.STATUS_APPROVED
    assert entry.mimeType == "application/octet-stream"
    identifiers = {i.identificationScheme: i.value for i in entry.ExternalIdentifier}
    assert identifiers[ebrim.DE_UNIQUE_ID] == unique_id
    assert identifiers[ebrim.DE_PATIENT_ID] == PATIENT
    slots = {s.name: s.ValueList.Value for s in entry.Slot}
    assert slots["size"] == [str(len(DOCUMENT))]
    assert slots["repositoryUniqueId"] == [service[1].repository.unique_id]


def test_iti18_from_zeep_for_another_patient_finds_nothing(service, submitted):
    base, _ = service
    client = zeep.Client(wsdl=f"{base}/xds/registry?wsdl", transport=RecordingTransport())

    result = client.service.DocumentRegistry_RegistryStoredQuery(
        ResponseOption={"returnType": "LeafClass", "returnComposedObjects": True},
        AdhocQuery={"id": ebrim.FIND_DOCUMENTS, "Slot": [
            slot("$XDSDocumentEntryPatientId", "'NOBODY^^^&1.2.3.9&ISO'"),
            slot("$XDSDocumentEntryStatus", f"('{ebrim.STATUS_APPROVED}')"),
        ]},
    )

    assert result.status == ebrim.SUCCESS
    assert not (result.RegistryObjectList and result.RegistryObjectList._value_1)


# RAD-69 ------------------------------------------------------------------------------------------

@pytest.mark.skipif(not HAS_RAD69, reason="xds/rad69.py (the RAD-69 Imaging Document Source) is not in the tree yet")
def test_rad69_from_zeep_retrieves_an_archived_instance(tmp_path):
    import pydicom

    from dicom.importer import import_paths
    from xds.runtime import build_app

    settings = settings_for(tmp_path, storage__database_url=f"sqlite:///{tmp_path / 'xdsi.db'}")
    app = build_app(settings, start_dicom=False, start_worker=False)
    archive = app.state.components.archive
    assert import_paths([DEPT022], archive).stored == 1
    (path,) = sorted(DEPT022.iterdir())
    original = path.read_bytes()
    header = pydicom.dcmread(path, stop_before_pixels=True)

    with serve(app) as base:
        transport = RecordingTransport()
        client = zeep.Client(wsdl=f"{base}/xdsi/imaging-source?wsdl", transport=transport)
        result = client.service.ImagingDocumentSource_RetrieveImagingDocumentSet(
            StudyRequest=[{"studyInstanceUID": str(header.StudyInstanceUID), "SeriesRequest": [{
                "seriesInstanceUID": str(header.SeriesInstanceUID),
                "DocumentRequest": [{"RepositoryUniqueId": settings.source.unique_id,
                                     "DocumentUniqueId": str(header.SOPInstanceUID)}],
            }]}],
            TransferSyntaxUIDList={"TransferSyntaxUID": [str(header.file_meta.TransferSyntaxUID)]},
        )

    assert result.RegistryResponse.status == ebrim.SUCCESS, result.RegistryResponse
    (response,) = result.DocumentResponse
    assert response.DocumentUniqueId == str(header.SOPInstanceUID)
    assert response.mimeType == ebrim.MIME_DICOM
    answer = read_answer(transport.last_response)
    ((_mime_type, data),) = answer.documents().values()
    # Served byte for byte as archived; the archive keeps the data set as received and writes
    # its own File Meta Information, so the source file's data set must match too.
    with archive.open_instance(str(header.SOPInstanceUID)) as stored:
        assert data == stored.read()
    assert _data_set(data) == _data_set(original)


def _data_set(part10: bytes) -> bytes:
    """The bytes after the File Meta Information group of a Part 10 file."""
    import struct

    group_length = struct.unpack("<I", part10[140:144])[0]  # (0002,0000) UL, explicit VR LE
    return part10[144 + group_length:]
