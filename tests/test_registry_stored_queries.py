"""Embedded Document Registry: the ITI-18 stored queries FindSubmissionSets,
GetSubmissionSetAndContents, GetDocumentsAndAssociations and GetRelatedDocuments, and their
parameter errors, on SQLite and PostgreSQL. Every answer is checked against the official ebRS
query.xsd (which imports rim.xsd and rs.xsd).

The registry holds three submissions, all registered through ITI-42:

* A: the corpus RegisterTwoDocuments (patient P, documents 9501 and 9502, set 9503);
* B: patient P again, document 7501 replacing 9501 (RPLC), set 7503, another source, author,
  content type and submission time;
* C: another patient, two documents, set 6503.
"""

from __future__ import annotations

import copy

import pytest
from lxml import etree
from sqlalchemy.engine import Engine

from tests.dbfixtures import (  # noqa: F401 (fixtures)
    assert_schema_valid,
    corpus_request,
    db_url,
    registry_engine,
)
from tests.test_registry_embedded import PATIENT, TWO_DOCS, _ids, _query, _status
from xds import ebrim
from xds.metadata import RIM_CLASSIFICATION, Submission
from xds.registry import EmbeddedRegistry

OTHER_PATIENT = "other77^^^&1.2.3.45.4.3.2.1&ISO"
SOURCE_A = "1.3.6.1.4.1.21367.13.2250"
SOURCE_B = "1.2.3.77"


def uuid(marker: str, last: str) -> str:
    """The entryUUID of object ``last`` (e.g. ``501``) in submission ``marker`` (9, 7 or 6)."""
    return f"urn:uuid:aabbccdd-bdda-424e-8c96-df4873be{marker}{last}"


DOC_A1, DOC_A2, SET_A = uuid("9", "501"), uuid("9", "502"), uuid("9", "503")
LINK_A1, LINK_A2 = uuid("9", "101"), uuid("9", "102")
DOC_B, SET_B, LINK_B = uuid("7", "501"), uuid("7", "503"), uuid("7", "101")
DOC_C1, DOC_C2, SET_C = uuid("6", "501"), uuid("6", "502"), uuid("6", "503")
UNIQUE_A1, UNIQUE_A2, UNIQUE_SET_A = (
    "1.42.20120601170229.42",
    "1.42.20120601170229.43",
    "1.42.20120601170229.44",
)


def _submission(
    marker: str,
    patient: str,
    submission_time: str,
    author: str,
    source_id: str,
    content_type: str,
    replaces: str | None = None,
) -> etree._Element:
    """RegisterTwoDocuments renamed to ``marker``; with ``replaces``, its first document only,
    replacing that entry."""
    request = copy.deepcopy(corpus_request(TWO_DOCS))
    submission = Submission.parse(request)
    object_list = request[0]
    if replaces is not None:
        object_list.remove(submission.document_entries[1].element)
        object_list.remove(submission.associations[1].element)

    for element in request.iter(tag=etree.Element):
        for attribute, value in element.attrib.items():
            element.set(attribute, value.replace("-df4873be9", f"-df4873be{marker}"))
        if element.get("value") in (UNIQUE_A1, UNIQUE_A2, UNIQUE_SET_A):
            element.set("value", f"{element.get('value')}.{marker}")
        if element.get("value") == PATIENT:
            element.set("value", patient)
        if element.get("value") == SOURCE_A:
            element.set("value", source_id)

    package = Submission.parse(request).submission_set
    assert package is not None
    package.set_slot("submissionTime", [submission_time])
    for classification in package.element.iterchildren(RIM_CLASSIFICATION):
        if classification.get("classificationScheme") == ebrim.SS_AUTHOR:
            next(classification.iter(ebrim.q("rim", "Value"))).text = author
        if classification.get("classificationScheme") == ebrim.SS_CONTENT_TYPE_CODE:
            classification.set("nodeRepresentation", content_type)

    if replaces is not None:
        etree.SubElement(
            object_list,
            ebrim.q("rim", "Association"),
            id="rplc01",
            associationType=ebrim.RPLC,
            sourceObject=uuid(marker, "501"),
            targetObject=replaces,
        )
    return request


@pytest.fixture
def registry(registry_engine: Engine) -> EmbeddedRegistry:
    registry = EmbeddedRegistry(registry_engine)
    submissions = [
        corpus_request(TWO_DOCS),
        _submission(
            "7", PATIENT, "20060101120000", "^Welby^Marcus^^^", SOURCE_B, "Imaging", DOC_A1
        ),
        _submission("6", OTHER_PATIENT, "20041225235050", "^Other^Ann^^^", SOURCE_A, "X"),
    ]
    for request in submissions:
        assert _status(registry.register(request)) == (ebrim.SUCCESS, [])
    return registry


def ask(
    registry: EmbeddedRegistry,
    query_id: str,
    params: dict[str, list[str]],
    return_type: str = ebrim.RETURN_LEAF_CLASS,
) -> etree._Element:
    """Run a stored query that must succeed with a schema-valid answer; return the answer."""
    response = registry.stored_query(_query(query_id, params, return_type))
    assert _status(response) == (ebrim.SUCCESS, [])
    assert_schema_valid(response, "query.xsd")
    return response


def kinds(response: etree._Element) -> list[str]:
    return [etree.QName(child).localname for child in response[0]]


def objects(response: etree._Element) -> dict[str, etree._Element]:
    return {child.get("id"): child for child in response[0]}


def rplc_link(registry: EmbeddedRegistry) -> str:
    """The entryUUID the registry gave the RPLC association of submission B."""
    links = ask(registry, ebrim.GET_ASSOCIATIONS, {"$uuid": [f"'{DOC_B}'"]})
    (rplc,) = [link for link in links[0] if link.get("associationType") == ebrim.RPLC]
    return rplc.get("id")


# -- FindSubmissionSets -----------------------------------------------------------------------


def test_find_submission_sets_of_a_patient_leaf_class_and_object_ref(
    registry: EmbeddedRegistry,
) -> None:
    params = {
        "$XDSSubmissionSetPatientId": [f"'{PATIENT}'"],
        "$XDSSubmissionSetStatus": [f"('{ebrim.STATUS_APPROVED}')"],
    }
    leaves = ask(registry, ebrim.FIND_SUBMISSION_SETS, params)
    assert _ids(leaves) == sorted([SET_A, SET_B])
    assert kinds(leaves) == ["RegistryPackage", "RegistryPackage"]
    assert all(leaf.get("status") == ebrim.STATUS_APPROVED for leaf in leaves[0])

    refs = ask(registry, ebrim.FIND_SUBMISSION_SETS, params, ebrim.RETURN_OBJECT_REF)
    assert _ids(refs) == sorted([SET_A, SET_B])
    assert kinds(refs) == ["ObjectRef", "ObjectRef"]

    other = {**params, "$XDSSubmissionSetPatientId": [f"'{OTHER_PATIENT}'"]}
    assert _ids(ask(registry, ebrim.FIND_SUBMISSION_SETS, other)) == [SET_C]
    deprecated = {**params, "$XDSSubmissionSetStatus": [f"('{ebrim.STATUS_DEPRECATED}')"]}
    assert _ids(ask(registry, ebrim.FIND_SUBMISSION_SETS, deprecated)) == []


def test_find_submission_sets_filters(registry: EmbeddedRegistry) -> None:
    base = {
        "$XDSSubmissionSetPatientId": [f"'{PATIENT}'"],
        "$XDSSubmissionSetStatus": [f"('{ebrim.STATUS_APPROVED}')"],
    }

    def find(**extra: list[str]) -> list[str]:
        params = {**base, **{f"$XDSSubmissionSet{k}": v for k, v in extra.items()}}
        return _ids(ask(registry, ebrim.FIND_SUBMISSION_SETS, params, ebrim.RETURN_OBJECT_REF))

    assert find(SourceId=[f"('{SOURCE_B}')"]) == [SET_B]
    assert find(SourceId=[f"('{SOURCE_A}', '{SOURCE_B}')"]) == sorted([SET_A, SET_B])
    assert find(SubmissionTimeFrom=["2005"]) == [SET_B]
    assert find(SubmissionTimeTo=["2005"]) == [SET_A]
    # From is inclusive, To exclusive.
    assert find(SubmissionTimeFrom=["20041225235050"], SubmissionTimeTo=["20041225235051"]) == [
        SET_A
    ]
    assert find(SubmissionTimeTo=["20041225235050"]) == []
    assert find(AuthorPerson=["'^Welby^Marcus^^^'"]) == [SET_B]
    assert find(AuthorPerson=["'%Dopplemeyer%'"]) == [SET_A]
    assert find(AuthorPerson=["'^W_lby%'"]) == [SET_B]
    assert find(AuthorPerson=["'Welby'"]) == []
    assert find(ContentType=["('Imaging')"]) == [SET_B]
    assert find(ContentType=["('History and Physical^^dcm4che contentTypeCodes')"]) == [SET_A]
    assert find(ContentType=["('History and Physical^^another scheme')"]) == []


# -- GetSubmissionSetAndContents ----------------------------------------------------------------


def test_get_submission_set_and_contents_by_entry_uuid(registry: EmbeddedRegistry) -> None:
    answer = ask(
        registry,
        ebrim.GET_SUBMISSION_SET_AND_CONTENTS,
        {"$XDSSubmissionSetEntryUUID": [f"'{SET_A}'"]},
    )
    assert kinds(answer) == [
        "RegistryPackage",
        "ExtrinsicObject",
        "ExtrinsicObject",
        "Association",
        "Association",
    ]
    assert _ids(answer) == sorted([SET_A, DOC_A1, DOC_A2, LINK_A1, LINK_A2])
    found = objects(answer)
    # The replaced document comes back as it now is: Deprecated.
    assert found[DOC_A1].get("status") == ebrim.STATUS_DEPRECATED
    assert found[DOC_A2].get("status") == ebrim.STATUS_APPROVED
    for link in (LINK_A1, LINK_A2):
        assert found[link].get("associationType") == ebrim.HAS_MEMBER
        assert found[link].get("sourceObject") == SET_A


def test_get_submission_set_and_contents_by_unique_id_leaves_out_the_rplc(
    registry: EmbeddedRegistry,
) -> None:
    params = {"$XDSSubmissionSetUniqueId": [f"'{UNIQUE_SET_A}.7'"]}
    answer = ask(registry, ebrim.GET_SUBMISSION_SET_AND_CONTENTS, params, ebrim.RETURN_OBJECT_REF)
    assert _ids(answer) == sorted([SET_B, DOC_B, LINK_B])
    assert rplc_link(registry) not in _ids(answer)
    assert kinds(answer) == ["ObjectRef"] * 3

    unknown = {"$XDSSubmissionSetUniqueId": ["'1.2.3.4.5.404'"]}
    assert _ids(ask(registry, ebrim.GET_SUBMISSION_SET_AND_CONTENTS, unknown)) == []


def test_get_submission_set_and_contents_document_filters(registry: EmbeddedRegistry) -> None:
    def contents(**extra: list[str]) -> list[str]:
        params = {
            "$XDSSubmissionSetEntryUUID": [f"'{SET_A}'"],
            **{f"$XDSDocumentEntry{k}": v for k, v in extra.items()},
        }
        answer = ask(registry, ebrim.GET_SUBMISSION_SET_AND_CONTENTS, params)
        return _ids(answer)

    assert contents(FormatCode=["('CDAR2/IHE 1.0^^dcm4che formatCodes')"]) == sorted(
        [SET_A, DOC_A1, LINK_A1]
    )
    assert contents(ConfidentialityCode=["('1.3.6.1.4.1.21367.2006.7.104')"]) == sorted(
        [SET_A, DOC_A2, LINK_A2]
    )
    # Two rim:Value groups of confidentialityCode are ANDed: no document has both codes.
    assert contents(
        ConfidentialityCode=["('1.3.6.1.4.1.21367.2006.7.103')", "('1.3.6.1.4.1.21367.2006.7.104')"]
    ) == [SET_A]
    assert contents(Type=[f"('{ebrim.DOCUMENT_ENTRY_ON_DEMAND}')"]) == [SET_A]
    assert contents(Type=[f"('{ebrim.DOCUMENT_ENTRY_STABLE}')"]) == sorted(
        [SET_A, DOC_A1, DOC_A2, LINK_A1, LINK_A2]
    )


# -- GetDocumentsAndAssociations ----------------------------------------------------------------


def test_get_documents_and_associations(registry: EmbeddedRegistry) -> None:
    rplc = rplc_link(registry)
    answer = ask(
        registry, ebrim.GET_DOCUMENTS_AND_ASSOCIATIONS, {"$XDSDocumentEntryEntryUUID": [f"('{DOC_A1}')"]}
    )
    assert kinds(answer) == ["ExtrinsicObject", "Association", "Association"]
    assert _ids(answer) == sorted([DOC_A1, LINK_A1, rplc])
    found = objects(answer)
    assert found[LINK_A1].get("targetObject") == DOC_A1  # DOC_A1 as target of its set ...
    assert found[rplc].get("targetObject") == DOC_A1  # ... and of its replacement

    by_unique_id = ask(
        registry,
        ebrim.GET_DOCUMENTS_AND_ASSOCIATIONS,
        {"$XDSDocumentEntryUniqueId": [f"('{UNIQUE_A2}', '{UNIQUE_A1}.7')"]},
        ebrim.RETURN_OBJECT_REF,
    )
    # DOC_B is the source of the RPLC: associations with the document as source count too.
    assert _ids(by_unique_id) == sorted([DOC_A2, LINK_A2, DOC_B, LINK_B, rplc])


# -- GetRelatedDocuments ----------------------------------------------------------------------------


def test_get_related_documents_follows_rplc_to_the_successor(registry: EmbeddedRegistry) -> None:
    rplc = rplc_link(registry)
    params = {
        "$XDSDocumentEntryEntryUUID": [f"'{DOC_A1}'"],
        "$AssociationTypes": [f"('{ebrim.RPLC}', '{ebrim.APND}')"],
    }
    answer = ask(registry, ebrim.GET_RELATED_DOCUMENTS, params)
    assert kinds(answer) == ["ExtrinsicObject", "ExtrinsicObject", "Association"]
    found = objects(answer)
    assert set(found) == {DOC_A1, DOC_B, rplc}
    assert found[DOC_A1].get("status") == ebrim.STATUS_DEPRECATED
    assert found[DOC_B].get("status") == ebrim.STATUS_APPROVED
    assert (found[rplc].get("sourceObject"), found[rplc].get("targetObject")) == (DOC_B, DOC_A1)

    # From the successor by its uniqueId, with $homeCommunityId (ignored), as ObjectRefs.
    from_successor = {
        "$XDSDocumentEntryUniqueId": [f"'{UNIQUE_A1}.7'"],
        "$AssociationTypes": [f"('{ebrim.RPLC}')"],
        "$homeCommunityId": ["'urn:oid:1.2.3.4'"],
    }
    refs = ask(registry, ebrim.GET_RELATED_DOCUMENTS, from_successor, ebrim.RETURN_OBJECT_REF)
    assert _ids(refs) == sorted([DOC_A1, DOC_B, rplc])


def test_get_related_documents_returns_nothing_without_relation(
    registry: EmbeddedRegistry,
) -> None:
    other_type = {
        "$XDSDocumentEntryEntryUUID": [f"'{DOC_A1}'"],
        "$AssociationTypes": [f"('{ebrim.APND}', '{ebrim.XFRM}', '{ebrim.SIGNS}')"],
    }
    assert _ids(ask(registry, ebrim.GET_RELATED_DOCUMENTS, other_type)) == []
    unrelated = {
        "$XDSDocumentEntryEntryUUID": [f"'{DOC_A2}'"],
        "$AssociationTypes": [f"('{ebrim.RPLC}')"],
    }
    assert _ids(ask(registry, ebrim.GET_RELATED_DOCUMENTS, unrelated)) == []


# -- parameter errors -------------------------------------------------------------------------------

APPROVED = [f"('{ebrim.STATUS_APPROVED}')"]
A_UUID = "'urn:uuid:aabbccdd-bdda-424e-8c96-df4873be9501'"
RPLC_ONLY = [f"('{ebrim.RPLC}')"]

ERROR_CASES = {
    "find-sets-no-patient": (
        ebrim.FIND_SUBMISSION_SETS,
        {"$XDSSubmissionSetStatus": APPROVED},
        "XDSStoredQueryMissingParam",
        "$XDSSubmissionSetPatientId",
    ),
    "find-sets-no-status": (
        ebrim.FIND_SUBMISSION_SETS,
        {"$XDSSubmissionSetPatientId": [f"'{PATIENT}'"]},
        "XDSStoredQueryMissingParam",
        "$XDSSubmissionSetStatus",
    ),
    "find-sets-two-patients": (
        ebrim.FIND_SUBMISSION_SETS,
        {
            "$XDSSubmissionSetPatientId": [f"('{PATIENT}', '{OTHER_PATIENT}')"],
            "$XDSSubmissionSetStatus": APPROVED,
        },
        "XDSStoredQueryParamNumber",
        "$XDSSubmissionSetPatientId",
    ),
    "find-sets-two-authors": (
        ebrim.FIND_SUBMISSION_SETS,
        {
            "$XDSSubmissionSetPatientId": [f"'{PATIENT}'"],
            "$XDSSubmissionSetStatus": APPROVED,
            "$XDSSubmissionSetAuthorPerson": ["'a%'", "'b%'"],
        },
        "XDSStoredQueryParamNumber",
        "$XDSSubmissionSetAuthorPerson",
    ),
    "find-sets-bad-time": (
        ebrim.FIND_SUBMISSION_SETS,
        {
            "$XDSSubmissionSetPatientId": [f"'{PATIENT}'"],
            "$XDSSubmissionSetStatus": APPROVED,
            "$XDSSubmissionSetSubmissionTimeFrom": ["'yesterday'"],
        },
        "XDSRegistryError",
        "$XDSSubmissionSetSubmissionTimeFrom",
    ),
    "find-sets-unterminated-quote": (
        ebrim.FIND_SUBMISSION_SETS,
        {"$XDSSubmissionSetPatientId": [f"'{PATIENT}"], "$XDSSubmissionSetStatus": APPROVED},
        "XDSRegistryError",
        "$XDSSubmissionSetPatientId",
    ),
    "find-documents-bad-time": (
        ebrim.FIND_DOCUMENTS,
        {
            "$XDSDocumentEntryPatientId": [f"'{PATIENT}'"],
            "$XDSDocumentEntryStatus": APPROVED,
            "$XDSDocumentEntryCreationTimeTo": ["2005-12-24"],
        },
        "XDSRegistryError",
        "$XDSDocumentEntryCreationTimeTo",
    ),
    "set-contents-neither": (
        ebrim.GET_SUBMISSION_SET_AND_CONTENTS,
        {},
        "XDSStoredQueryParamNumber",
        "GetSubmissionSetAndContents",
    ),
    "set-contents-both": (
        ebrim.GET_SUBMISSION_SET_AND_CONTENTS,
        {"$XDSSubmissionSetEntryUUID": [A_UUID], "$XDSSubmissionSetUniqueId": ["'1.2.3'"]},
        "XDSStoredQueryParamNumber",
        "GetSubmissionSetAndContents",
    ),
    "set-contents-two-sets": (
        ebrim.GET_SUBMISSION_SET_AND_CONTENTS,
        {"$XDSSubmissionSetUniqueId": ["('1.2.3', '1.2.4')"]},
        "XDSStoredQueryParamNumber",
        "$XDSSubmissionSetUniqueId",
    ),
    "set-contents-bad-uuid": (
        ebrim.GET_SUBMISSION_SET_AND_CONTENTS,
        {"$XDSSubmissionSetEntryUUID": ["'1.2.3'"]},
        "XDSRegistryError",
        "$XDSSubmissionSetEntryUUID",
    ),
    "docs-and-links-neither": (
        ebrim.GET_DOCUMENTS_AND_ASSOCIATIONS,
        {"$homeCommunityId": ["'urn:oid:1.2.3'"]},
        "XDSStoredQueryParamNumber",
        "GetDocumentsAndAssociations",
    ),
    "docs-and-links-both": (
        ebrim.GET_DOCUMENTS_AND_ASSOCIATIONS,
        {"$XDSDocumentEntryEntryUUID": [A_UUID], "$XDSDocumentEntryUniqueId": ["'1.2.3'"]},
        "XDSStoredQueryParamNumber",
        "GetDocumentsAndAssociations",
    ),
    "docs-and-links-bad-uuid": (
        ebrim.GET_DOCUMENTS_AND_ASSOCIATIONS,
        {"$XDSDocumentEntryEntryUUID": ["('urn:uuid:nope')"]},
        "XDSRegistryError",
        "$XDSDocumentEntryEntryUUID",
    ),
    "related-no-types": (
        ebrim.GET_RELATED_DOCUMENTS,
        {"$XDSDocumentEntryEntryUUID": [A_UUID]},
        "XDSStoredQueryMissingParam",
        "$AssociationTypes",
    ),
    "related-has-member-type": (
        ebrim.GET_RELATED_DOCUMENTS,
        {"$XDSDocumentEntryEntryUUID": [A_UUID], "$AssociationTypes": [f"('{ebrim.HAS_MEMBER}')"]},
        "XDSRegistryError",
        "$AssociationTypes",
    ),
    "related-two-documents": (
        ebrim.GET_RELATED_DOCUMENTS,
        {"$XDSDocumentEntryUniqueId": ["('1.2.3', '1.2.4')"], "$AssociationTypes": RPLC_ONLY},
        "XDSStoredQueryParamNumber",
        "$XDSDocumentEntryUniqueId",
    ),
    "related-neither": (
        ebrim.GET_RELATED_DOCUMENTS,
        {"$AssociationTypes": RPLC_ONLY},
        "XDSStoredQueryParamNumber",
        "GetRelatedDocuments",
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_parameter_errors(registry_engine: Engine, case: str) -> None:
    query_id, params, code, context = ERROR_CASES[case]
    response = EmbeddedRegistry(registry_engine).stored_query(_query(query_id, params))
    assert _status(response) == (ebrim.FAILURE, [code])
    error = response.find(f"{ebrim.q('rs', 'RegistryErrorList')}/{ebrim.q('rs', 'RegistryError')}")
    assert error.get("location") == context
    assert context in error.get("codeContext")
    assert len(response.find(ebrim.q("rim", "RegistryObjectList"))) == 0
    assert_schema_valid(response, "query.xsd")


def test_unknown_query_names_every_supported_query(registry_engine: Engine) -> None:
    response = EmbeddedRegistry(registry_engine).stored_query(
        _query("urn:uuid:10cae35a-c7f9-4cf5-b61e-fc3278ffb578", {})  # GetFoldersForDocument
    )
    assert _status(response) == (ebrim.FAILURE, ["XDSUnknownStoredQuery"])
    context = response[0][0].get("codeContext")
    for name in ("FindSubmissionSets", "GetSubmissionSetAndContents", "GetRelatedDocuments"):
        assert name in context
