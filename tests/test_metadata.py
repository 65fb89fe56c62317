"""XDS metadata view and RegistryResponse: parsing corpus submissions, building responses."""

from __future__ import annotations

import copy

import pytest
from lxml import etree

from tests.conftest import CORPUS
from tests.dbfixtures import assert_schema_valid, corpus_request
from xds import ebrim
from xds.errors import (
    ErrorCode,
    RegistryError,
    XdsError,
    effective_status,
    parse_registry_response,
    registry_response,
)
from xds.metadata import Code, Submission

CORPUS_COUNTS = [
    # file, SubmissionSets, DocumentEntries, Associations
    ("dcm4cheexds-RegisterTwoDocuments.xml", 1, 2, 2),
    ("dcm4cheexds-ResubmitInitialDoc.xml", 1, 1, 1),
    ("ipf-continua-ProvideAndRegisterDocumentSet.xml", 1, 1, 1),
    ("nist-pnr-bad-uplink.xml", 1, 2, 2),
    ("nist-PnrXop-Xop-body.txt", 1, 1, 1),
    ("nist-PnrXop-NoXop-body.txt", 1, 1, 1),
    ("nist-PnrXop-dicom-body.txt", 1, 1, 1),
    ("nist-PnrXop-encodedURL-body.txt", 1, 1, 1),
]


@pytest.mark.parametrize("name, sets, entries, associations", CORPUS_COUNTS)
def test_parse_corpus_submission_counts(
    name: str, sets: int, entries: int, associations: int
) -> None:
    submission = Submission.parse(corpus_request(name))
    assert len(submission.submission_sets) == sets
    assert len(submission.document_entries) == entries
    assert len(submission.associations) == associations
    assert submission.folders == []


def test_parse_register_two_documents_values() -> None:
    submission = Submission.parse(corpus_request("dcm4cheexds-RegisterTwoDocuments.xml"))
    first, second = submission.document_entries

    assert first.entry_uuid == "urn:uuid:aabbccdd-bdda-424e-8c96-df4873be9501"
    assert first.unique_id == "1.42.20120601170229.42"
    assert second.unique_id == "1.42.20120601170229.43"
    assert first.patient_id == "test1234_2^^^&1.2.3.45.4.3.2.1&ISO"
    assert first.mime_type == "text/xml"
    assert first.object_type == ebrim.DOCUMENT_ENTRY_STABLE
    assert first.hash == "E543712C0E10501972DE13A5BFCBE826C49FEB75"
    assert first.size == "345675"
    assert first.repository_unique_id == "1.19.6.24.109.42.1"
    assert first.source_patient_id == "89765a87b^^^&3.4.5&ISO"
    assert first.creation_time == "20051224"
    assert len(first.slot("sourcePatientInfo")) == 5
    assert first.classifications(ebrim.DE_CLASS_CODE) == [
        Code("Communication", "dcm4che classCodes", "Education")
    ]
    assert first.external_identifier(ebrim.DE_UNIQUE_ID) == first.unique_id
    assert first.external_identifier("urn:uuid:00000000-0000-0000-0000-000000000000") is None

    submission_set = submission.submission_set
    assert submission_set is not None
    assert submission_set.unique_id == "1.42.20120601170229.44"
    assert submission_set.source_id == "1.3.6.1.4.1.21367.13.2250"
    assert submission_set.patient_id == first.patient_id
    assert submission_set.submission_time == "20041225235050"
    assert submission_set.content_type_code is not None
    assert submission_set.content_type_code.display == "History and Physical"

    link = submission.associations[0]
    assert link.association_type == ebrim.HAS_MEMBER
    assert (link.source, link.target) == (submission_set.id, first.id)
    assert link.slot("SubmissionSetStatus") == ["Original"]


def test_parse_sibling_submission_set_classification_marks_package() -> None:
    # ipf places the SubmissionSet node Classification beside the RegistryPackage.
    submission = Submission.parse(corpus_request("ipf-continua-ProvideAndRegisterDocumentSet.xml"))
    assert submission.submission_set is not None
    assert submission.submission_set.id == "SubmissionSet01"
    assert submission.objects_by_id["SubmissionSet01"] is submission.submission_set


def test_parse_dicom_body_keeps_object_refs_and_extra_slots() -> None:
    submission = Submission.parse(corpus_request("nist-PnrXop-dicom-body.txt"))
    entry = submission.document_entries[0]
    assert entry.mime_type == ebrim.MIME_DICOM
    assert entry.slot("urn:acuo:studyInstanceUid")  # extra slot readable
    assert len(submission.object_refs) == 17


def test_set_slot_adds_after_existing_slots_and_replaces() -> None:
    submission = Submission.parse(corpus_request("nist-PnrXop-Xop-body.txt"))
    entry = submission.document_entries[0]
    entry.set_slot("hash", ["da39a3ee5e6b4b0d3255bfef95601890afd80709"])
    entry.set_slot("size", ["0"])
    entry.set_slot("repositoryUniqueId", ["1.2.3"])
    entry.set_slot("repositoryUniqueId", ["1.2.4"])

    assert entry.hash == "da39a3ee5e6b4b0d3255bfef95601890afd80709"
    assert entry.slot("repositoryUniqueId") == ["1.2.4"]
    names = [etree.QName(child).localname for child in entry.element if isinstance(child.tag, str)]
    last_slot = max(i for i, n in enumerate(names) if n == "Slot")
    assert names.index("Name") > last_slot  # schema order kept: Slots first
    assert_schema_valid(submission.request, "lcm.xsd")


def test_set_slot_on_object_without_slots_inserts_first() -> None:
    request = copy.deepcopy(corpus_request("nist-PnrXop-Xop-body.txt"))
    submission = Submission.parse(request)
    association = submission.associations[0]
    for slot in list(association.element):
        association.element.remove(slot)
    association.set_slot("SubmissionSetStatus", ["Original"])
    assert association.slot("SubmissionSetStatus") == ["Original"]


def test_registry_response_failure_is_schema_valid_with_all_fields() -> None:
    errors = [
        RegistryError(
            ErrorCode.XDSRepositoryMetadataError, "hash differs for Document01", "Document01"
        ),
        RegistryError("XDSExtraMetadataNotSaved", "slot dropped", severity=ebrim.SEVERITY_WARNING),
    ]
    response = registry_response(errors)
    assert_schema_valid(response, "rs.xsd")
    assert response.get("status") == ebrim.FAILURE
    error_list = response.find(ebrim.q("rs", "RegistryErrorList"))
    assert error_list.get("highestSeverity") == ebrim.SEVERITY_ERROR
    first = error_list[0]
    assert first.get("errorCode") == "XDSRepositoryMetadataError"
    assert first.get("codeContext") == "hash differs for Document01"
    assert first.get("severity") == ebrim.SEVERITY_ERROR
    assert first.get("location") == "Document01"
    assert error_list[1].get("location") is None


def test_registry_response_warnings_only_is_success() -> None:
    response = registry_response(
        [RegistryError("XDSExtraMetadataNotSaved", "x", severity=ebrim.SEVERITY_WARNING)]
    )
    assert response.get("status") == ebrim.SUCCESS
    assert response.find(ebrim.q("rs", "RegistryErrorList")).get("highestSeverity") == (
        ebrim.SEVERITY_WARNING
    )
    empty = registry_response([])
    assert empty.get("status") == ebrim.SUCCESS and len(empty) == 0
    assert_schema_valid(empty, "rs.xsd")


def test_parse_registry_response_round_trip() -> None:
    errors = [RegistryError(ErrorCode.XDSNonIdenticalHash, "uniqueId 1.2", "1.2")]
    status, parsed = parse_registry_response(registry_response(errors))
    assert status == ebrim.FAILURE
    assert parsed == errors


def test_parse_nist_success_with_error_entry_counts_as_failure() -> None:
    element = etree.parse(str(CORPUS / "nist-regresp-suc-err.xml")).getroot()
    status, errors = parse_registry_response(element)
    assert element.get("status") == ebrim.SUCCESS
    assert status == ebrim.FAILURE
    assert [e.error_code for e in errors] == ["XDSUnknownPatientId"]
    assert effective_status(ebrim.SUCCESS, []) == ebrim.SUCCESS


def test_xds_error_carries_registry_errors() -> None:
    exc = XdsError(ErrorCode.XDSRegistryError, "boom", "here")
    assert exc.errors == [RegistryError("XDSRegistryError", "boom", "here")]
    several = XdsError.of([RegistryError("A", "a"), RegistryError("B", "b")])
    assert [e.error_code for e in several.errors] == ["A", "B"]
