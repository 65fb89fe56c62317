"""Metadata validation for ITI-41 (repository role) and ITI-42 (registry role)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
from lxml import etree

from tests.dbfixtures import corpus_request
from xds import ebrim
from xds.metadata import RIM_CLASSIFICATION, RIM_EXTERNAL_IDENTIFIER, Submission
from xds.validation import is_dtm, validate_submission

GOOD_PNR = [
    "nist-PnrXop-Xop-body.txt",
    "nist-PnrXop-NoXop-body.txt",
    "nist-PnrXop-dicom-body.txt",
    "nist-PnrXop-encodedURL-body.txt",
    "ipf-continua-ProvideAndRegisterDocumentSet.xml",
    "dcm4cheexds-RegisterTwoDocuments.xml",
]
GOOD_ITI42 = [
    "dcm4cheexds-RegisterTwoDocuments.xml",
    "dcm4cheexds-ResubmitInitialDoc.xml",
    "dcm4cheexds-ResubmitWrongHash.xml",
]


def _submission(name: str = "dcm4cheexds-RegisterTwoDocuments.xml") -> Submission:
    return Submission.parse(copy.deepcopy(corpus_request(name)))


def _codes(errors) -> list[str]:  # type: ignore[no-untyped-def]
    return [str(error.error_code) for error in errors]


@pytest.mark.parametrize("name", GOOD_PNR)
def test_iti41_corpus_good_metadata_has_no_errors(name: str) -> None:
    assert validate_submission(_submission(name), role="repository") == []


@pytest.mark.parametrize("name", GOOD_ITI42)
def test_iti42_corpus_good_metadata_has_no_errors(name: str) -> None:
    assert validate_submission(_submission(name), role="registry") == []


def test_iti41_bad_uplink_gives_repository_metadata_error_with_location() -> None:
    errors = validate_submission(_submission("nist-pnr-bad-uplink.xml"), role="repository")
    assert _codes(errors) == ["XDSRepositoryMetadataError"]
    assert errors[0].location == "Document01"
    assert "Document011" in errors[0].code_context and "classifiedObject" in errors[0].code_context


def test_iti42_bad_uplink_gives_unresolved_reference() -> None:
    errors = validate_submission(_submission("nist-pnr-bad-uplink.xml"), role="registry")
    assert "UnresolvedReferenceException" in _codes(errors)


def test_iti42_requires_hash_size_repository_unique_id() -> None:
    errors = validate_submission(_submission("nist-PnrXop-Xop-body.txt"), role="registry")
    assert _codes(errors) == ["XDSRegistryMetadataError"] * 3
    assert {e.location for e in errors} == {"Document01"}
    assert any("repositoryUniqueId" in e.code_context for e in errors)


def test_unknown_role_is_rejected() -> None:
    with pytest.raises(ValueError):
        validate_submission(_submission(), role="consumer")


# -- hand-made mutations of RegisterTwoDocuments ------------------------------------------------


def _first_entry(submission: Submission) -> etree._Element:
    return submission.document_entries[0].element


def _remove_class_code(submission: Submission) -> None:
    entry = _first_entry(submission)
    for c in entry.findall(RIM_CLASSIFICATION):
        if c.get("classificationScheme") == ebrim.DE_CLASS_CODE:
            entry.remove(c)


def _second_submission_set(submission: Submission) -> None:
    package = copy.deepcopy(submission.submission_set.element)
    package.set("id", "urn:uuid:aabbccdd-bdda-424e-8c96-000000000001")
    submission.request[0].append(package)
    # Label it with a nested SubmissionSet node so that it counts as a SubmissionSet.
    etree.SubElement(
        package,
        RIM_CLASSIFICATION,
        id="cl-second",
        classifiedObject=package.get("id"),
        classificationNode=ebrim.SUBMISSION_SET_NODE,
    )


def _set_identifier(scheme: str, value: str) -> Callable[[Submission], None]:
    def mutate(submission: Submission) -> None:
        for ei in submission.request.iter(RIM_EXTERNAL_IDENTIFIER):
            if ei.get("identificationScheme") == scheme:
                ei.set("value", value)
                return

    return mutate


def _on_demand(submission: Submission) -> None:
    _first_entry(submission).set("objectType", ebrim.DOCUMENT_ENTRY_ON_DEMAND)


def _long_slot(submission: Submission) -> None:
    submission.document_entries[0].set_slot("URI", ["x" * 257])


def _duplicate_slot(submission: Submission) -> None:
    entry = _first_entry(submission)
    entry.insert(0, copy.deepcopy(entry.find(ebrim.q("rim", "Slot"))))


def _bad_hash(submission: Submission) -> None:
    submission.document_entries[0].set_slot("hash", ["not-a-sha1"])


def _bad_size(submission: Submission) -> None:
    submission.document_entries[0].set_slot("size", ["12kB"])


def _bad_creation_time(submission: Submission) -> None:
    submission.document_entries[0].set_slot("creationTime", ["2005-12-24"])


def _limited_metadata(submission: Submission) -> None:
    entry = _first_entry(submission)
    etree.SubElement(
        entry,
        RIM_CLASSIFICATION,
        id="lm",
        classifiedObject=entry.get("id"),
        classificationNode=ebrim.DE_LIMITED_METADATA,
    )


def _two_coding_schemes(submission: Submission) -> None:
    entry = _first_entry(submission)
    for c in entry.findall(RIM_CLASSIFICATION):
        if c.get("classificationScheme") == ebrim.DE_TYPE_CODE:
            value_list = c.find(f"{ebrim.q('rim', 'Slot')}/{ebrim.q('rim', 'ValueList')}")
            etree.SubElement(value_list, ebrim.q("rim", "Value")).text = "2.16.840.1.113883.6.1"


def _missing_submission_set_status(submission: Submission) -> None:
    link = submission.associations[0].element
    for slot in link.findall(ebrim.q("rim", "Slot")):
        link.remove(slot)


MUTATIONS = [
    # (mutation, role, expected code, words the codeContext must contain)
    (_remove_class_code, "registry", "XDSRegistryMetadataError", "classCode"),
    (
        _second_submission_set,
        "repository",
        "XDSRepositoryMetadataError",
        "exactly one SubmissionSet",
    ),
    (
        _set_identifier(ebrim.DE_PATIENT_ID, "12345"),
        "registry",
        "XDSRegistryMetadataError",
        "CX",
    ),
    (
        _set_identifier(ebrim.DE_PATIENT_ID, "other^^^&1.2.3&ISO"),
        "repository",
        "XDSPatientIdDoesNotMatch",
        "patientId",
    ),
    (
        _set_identifier(ebrim.SS_SOURCE_ID, "not an oid"),
        "registry",
        "XDSRegistryMetadataError",
        "sourceId",
    ),
    (_on_demand, "repository", "XDSRepositoryMetadataError", "On-Demand"),
    (_long_slot, "repository", "XDSRepositoryMetadataError", "256"),
    (_duplicate_slot, "repository", "XDSRepositoryMetadataError", "more than once"),
    (_bad_hash, "repository", "XDSRepositoryMetadataError", "hash"),
    (_bad_size, "repository", "XDSRepositoryMetadataError", "size"),
    (_bad_creation_time, "registry", "XDSRegistryMetadataError", "creationTime"),
    (_limited_metadata, "repository", "XDSRepositoryMetadataError", "limitedMetadata"),
    (_two_coding_schemes, "registry", "XDSRegistryMetadataError", "codingScheme"),
    (_missing_submission_set_status, "registry", "XDSRegistryMetadataError", "SubmissionSetStatus"),
]


@pytest.mark.parametrize("mutate, role, code, words", MUTATIONS)
def test_mutated_submission_gives_named_error(mutate, role, code, words) -> None:  # type: ignore[no-untyped-def]
    submission = _submission()
    mutate(submission)
    errors = validate_submission(Submission.parse(submission.request), role=role)
    matching = [e for e in errors if e.error_code == code and words in e.code_context]
    assert matching, errors
    assert all(e.location for e in matching)


def test_duplicate_document_unique_id_in_message_per_role() -> None:
    submission = _submission()
    second = submission.document_entries[1]
    for ei in second.element.iter(RIM_EXTERNAL_IDENTIFIER):
        if ei.get("identificationScheme") == ebrim.DE_UNIQUE_ID:
            ei.set("value", submission.document_entries[0].unique_id)
    reparsed = Submission.parse(submission.request)

    repository = validate_submission(reparsed, role="repository")
    registry = validate_submission(reparsed, role="registry")
    assert _codes(repository) == ["XDSRepositoryDuplicateUniqueIdInMessage"]
    assert _codes(registry) == ["XDSRegistryDuplicateUniqueIdInMessage"]
    assert repository[0].location == "1.42.20120601170229.42"


def test_extra_slots_are_not_errors() -> None:
    submission = _submission()
    submission.document_entries[0].set_slot("urn:example:extra", ["kept"])
    assert validate_submission(Submission.parse(submission.request), role="registry") == []


def test_document_entry_without_has_member_is_rejected() -> None:
    submission = _submission()
    submission.request[0].remove(submission.associations[1].element)
    errors = validate_submission(Submission.parse(submission.request), role="repository")
    assert any("HasMember" in e.code_context for e in errors)


@pytest.mark.parametrize(
    "value, ok",
    [
        ("2005", True),
        ("20051224", True),
        ("20051224235959", True),
        ("20051324", False),
        ("2005122", False),
        ("2005-12-24", False),
        ("20051224246000", False),
    ],
)
def test_dtm_format(value: str, ok: bool) -> None:
    assert is_dtm(value) is ok


@pytest.mark.parametrize("mutation", [_remove_class_code, _bad_creation_time, _two_coding_schemes])
def test_repository_checks_shallowly_and_leaves_attributes_to_the_registry(mutation):
    """ITI TF-2 3.41.4.1.3: the repository may check shallowly; the registry checks in full."""
    submission = _submission()
    mutation(submission)
    parsed = Submission.parse(submission.request)
    assert validate_submission(parsed, role="repository") == []
    assert validate_submission(parsed, role="registry") != []
