"""Embedded Document Registry: ITI-42 registration and ITI-18 stored queries, on SQLite and
PostgreSQL (see ``tests/dbfixtures.py``)."""

from __future__ import annotations

import copy
import threading

from lxml import etree
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from tests.dbfixtures import (  # noqa: F401 (fixtures)
    assert_schema_valid,
    corpus_request,
    db_url,
    registry_engine,
)
from xds import ebrim
from xds.errors import parse_registry_response
from xds.metadata import RIM_EXTERNAL_IDENTIFIER, Submission
from xds.registry import EmbeddedRegistry
from xds.registry.store import registry_objects, registry_unique_ids

PATIENT = "test1234_2^^^&1.2.3.45.4.3.2.1&ISO"
TWO_DOCS = "dcm4cheexds-RegisterTwoDocuments.xml"


def _query(
    query_id: str, params: dict[str, list[str]], return_type: str = "LeafClass"
) -> etree._Element:
    request = etree.Element(
        ebrim.q("query", "AdhocQueryRequest"), nsmap={"query": ebrim.QUERY, "rim": ebrim.RIM}
    )
    etree.SubElement(
        request,
        ebrim.q("query", "ResponseOption"),
        returnType=return_type,
        returnComposedObjects="true",
    )
    adhoc = etree.SubElement(request, ebrim.q("rim", "AdhocQuery"), id=query_id)
    for name, values in params.items():
        slot = etree.SubElement(adhoc, ebrim.q("rim", "Slot"), name=name)
        value_list = etree.SubElement(slot, ebrim.q("rim", "ValueList"))
        for value in values:
            etree.SubElement(value_list, ebrim.q("rim", "Value")).text = value
    return request


def _status(response: etree._Element) -> tuple[str, list[str]]:
    status, errors = parse_registry_response(response)
    return status, [str(e.error_code) for e in errors]


def _ids(response: etree._Element) -> list[str]:
    object_list = response.find(ebrim.q("rim", "RegistryObjectList"))
    return sorted(child.get("id") for child in object_list)


def _count(engine, table) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(table)).scalar_one()


def test_iti42_register_two_documents_then_iti18_finds_both(registry_engine: Engine) -> None:
    registry = EmbeddedRegistry(registry_engine)
    response = registry.register(corpus_request(TWO_DOCS))
    assert _status(response) == (ebrim.SUCCESS, [])
    assert_schema_valid(response, "rs.xsd")
    uuids = [
        "urn:uuid:aabbccdd-bdda-424e-8c96-df4873be9501",
        "urn:uuid:aabbccdd-bdda-424e-8c96-df4873be9502",
    ]

    get = registry.stored_query(
        _query(
            ebrim.GET_DOCUMENTS, {"$XDSDocumentEntryEntryUUID": [f"('{uuids[0]}', '{uuids[1]}')"]}
        )
    )
    assert _status(get) == (ebrim.SUCCESS, [])
    assert _ids(get) == uuids
    assert_schema_valid(get, "query.xsd")
    leaf = get.find(ebrim.q("rim", "RegistryObjectList"))[0]
    assert leaf.tag == ebrim.q("rim", "ExtrinsicObject")
    assert leaf.get("status") == ebrim.STATUS_APPROVED
    # The leaf keeps its metadata.
    assert any(ei.get("value") == PATIENT for ei in leaf.iter(RIM_EXTERNAL_IDENTIFIER))

    by_unique_id = registry.stored_query(
        _query(
            ebrim.GET_DOCUMENTS,
            {"$XDSDocumentEntryUniqueId": ["('1.42.20120601170229.43')"]},
            "ObjectRef",
        )
    )
    assert _ids(by_unique_id) == [uuids[1]]

    find = {
        "$XDSDocumentEntryPatientId": [f"'{PATIENT}'"],
        "$XDSDocumentEntryStatus": [f"('{ebrim.STATUS_APPROVED}')"],
    }
    for return_type, tag in (("LeafClass", "ExtrinsicObject"), ("ObjectRef", "ObjectRef")):
        found = registry.stored_query(_query(ebrim.FIND_DOCUMENTS, find, return_type))
        assert _status(found) == (ebrim.SUCCESS, [])
        assert _ids(found) == uuids
        assert {etree.QName(c).localname for c in found[0]} == {tag}
        assert_schema_valid(found, "query.xsd")


def test_iti18_find_documents_filters(registry_engine: Engine) -> None:
    registry = EmbeddedRegistry(registry_engine)
    registry.register(corpus_request(TWO_DOCS))
    base = {
        "$XDSDocumentEntryPatientId": [f"'{PATIENT}'"],
        "$XDSDocumentEntryStatus": [f"('{ebrim.STATUS_APPROVED}')"],
    }

    def find(**extra: list[str]) -> list[str]:
        params = {**base, **{f"$XDSDocumentEntry{k}": v for k, v in extra.items()}}
        return _ids(registry.stored_query(_query(ebrim.FIND_DOCUMENTS, params, "ObjectRef")))

    first, second = (
        "urn:uuid:aabbccdd-bdda-424e-8c96-df4873be9501",
        "urn:uuid:aabbccdd-bdda-424e-8c96-df4873be9502",
    )
    assert find(ClassCode=["('Communication^^dcm4che classCodes')"]) == [first]
    assert find(ClassCode=["('Communication^^other scheme')"]) == []
    assert find(FormatCode=["('CDAR2/IHE 1.0')", "('nothing')"]) == [first]
    assert find(Type=[f"('{ebrim.DOCUMENT_ENTRY_STABLE}')"]) == [first, second]
    assert find(Type=[f"('{ebrim.DOCUMENT_ENTRY_ON_DEMAND}')"]) == []
    assert find(CreationTimeFrom=["20051224"], CreationTimeTo=["20051225"]) == [first, second]
    assert find(CreationTimeFrom=["20060101"]) == []
    other_patient = {**base, "$XDSDocumentEntryPatientId": ["'nobody^^^&1.2.3&ISO'"]}
    assert _ids(registry.stored_query(_query(ebrim.FIND_DOCUMENTS, other_patient))) == []
    deprecated = {**base, "$XDSDocumentEntryStatus": [f"('{ebrim.STATUS_DEPRECATED}')"]}
    assert _ids(registry.stored_query(_query(ebrim.FIND_DOCUMENTS, deprecated))) == []


def test_iti18_get_submission_sets_and_associations(registry_engine: Engine) -> None:
    registry = EmbeddedRegistry(registry_engine)
    registry.register(corpus_request(TWO_DOCS))
    document = "urn:uuid:aabbccdd-bdda-424e-8c96-df4873be9501"

    sets = registry.stored_query(_query(ebrim.GET_SUBMISSION_SETS, {"$uuid": [f"('{document}')"]}))
    assert _status(sets) == (ebrim.SUCCESS, [])
    assert_schema_valid(sets, "query.xsd")
    kinds = [etree.QName(c).localname for c in sets[0]]
    assert kinds == ["RegistryPackage", "Association"]
    package = sets[0][0]
    assert package.get("id") == "urn:uuid:aabbccdd-bdda-424e-8c96-df4873be9503"
    assert any(
        c.get("classificationNode") == ebrim.SUBMISSION_SET_NODE
        for c in package.iter(ebrim.q("rim", "Classification"))
    )

    links = registry.stored_query(_query(ebrim.GET_ASSOCIATIONS, {"$uuid": [f"('{document}')"]}))
    assert len(links[0]) == 1 and links[0][0].get("targetObject") == document
    assert_schema_valid(links, "query.xsd")


def test_iti18_errors_missing_param_unknown_query(registry_engine: Engine) -> None:
    registry = EmbeddedRegistry(registry_engine)
    missing = registry.stored_query(
        _query(ebrim.FIND_DOCUMENTS, {"$XDSDocumentEntryStatus": [f"('{ebrim.STATUS_APPROVED}')"]})
    )
    assert _status(missing) == (ebrim.FAILURE, ["XDSStoredQueryMissingParam"])
    assert "$XDSDocumentEntryPatientId" in missing[0][0].get("codeContext")
    assert_schema_valid(missing, "query.xsd")

    two_patients = registry.stored_query(
        _query(
            ebrim.FIND_DOCUMENTS,
            {
                "$XDSDocumentEntryPatientId": ["('a^^^&1.2&ISO', 'b^^^&1.2&ISO')"],
                "$XDSDocumentEntryStatus": [f"('{ebrim.STATUS_APPROVED}')"],
            },
        )
    )
    assert _status(two_patients) == (ebrim.FAILURE, ["XDSStoredQueryParamNumber"])

    unknown = registry.stored_query(_query("urn:uuid:00000000-0000-0000-0000-000000000000", {}))
    assert _status(unknown) == (ebrim.FAILURE, ["XDSUnknownStoredQuery"])
    assert_schema_valid(unknown, "query.xsd")


def test_iti42_symbolic_ids_become_uuids(registry_engine: Engine) -> None:
    request = copy.deepcopy(corpus_request("nist-PnrXop-Xop-body.txt"))
    entry = Submission.parse(request).document_entries[0]
    entry.set_slot("hash", ["e543712c0e10501972de13a5bfcbe826c49feb75"])
    entry.set_slot("size", ["36"])
    entry.set_slot("repositoryUniqueId", ["1.3.6.1.4.1.21367.13.40.300"])
    registry = EmbeddedRegistry(registry_engine)
    assert _status(registry.register(request)) == (ebrim.SUCCESS, [])

    with registry_engine.connect() as connection:
        rows = connection.execute(select(registry_objects)).all()
    assert len(rows) == 3
    for row in rows:
        assert row.entry_uuid.startswith("urn:uuid:")
        assert "Document01" not in row.xml and "SubmissionSet01" not in row.xml
    link = next(r for r in rows if r.kind == "Association")
    kinds = {r.entry_uuid: r.kind for r in rows}
    assert kinds[link.source_object] == "SubmissionSet"
    assert kinds[link.target_object] == "DocumentEntry"
    # The caller's element is left as it was.
    assert entry.id == "Document01"


def test_iti42_resubmit_identical_then_wrong_hash(registry_engine: Engine) -> None:
    registry = EmbeddedRegistry(registry_engine)
    assert _status(registry.register(corpus_request("dcm4cheexds-ResubmitInitialDoc.xml"))) == (
        ebrim.SUCCESS,
        [],
    )
    objects_before = _count(registry_engine, registry_objects)

    response = registry.register(corpus_request("dcm4cheexds-ResubmitWrongHash.xml"))
    status, codes = _status(response)
    assert (status, codes) == (ebrim.FAILURE, ["XDSNonIdenticalHash"])
    error = response[0][0]
    assert "1.42.20120430135820.36" in error.get("codeContext")
    assert _count(registry_engine, registry_objects) == objects_before


def test_iti42_identical_resubmission_is_accepted(registry_engine: Engine) -> None:
    registry = EmbeddedRegistry(registry_engine)
    first = corpus_request("dcm4cheexds-ResubmitInitialDoc.xml")
    assert _status(registry.register(first))[0] == ebrim.SUCCESS
    # Same document (same uniqueId, hash, size) in a new SubmissionSet with symbolic ids.
    again = copy.deepcopy(corpus_request("dcm4cheexds-ResubmitWrongHash.xml"))
    Submission.parse(again).document_entries[0].set_slot(
        "hash", ["e543712c0e10501972de13a5bfcbe826c49feb75"]
    )
    assert _status(registry.register(again)) == (ebrim.SUCCESS, [])
    assert _count(registry_engine, registry_unique_ids) == 3  # DE once, two SS

    # The SubmissionSet uniqueId of the first submission cannot be reused.
    reused = copy.deepcopy(first)
    for element in reused.iter():
        if element.get("id", "").startswith("urn:uuid:"):
            element.set("id", element.get("id").replace("aaaa", "cccc"))
        for attribute in ("classifiedObject", "registryObject", "sourceObject", "targetObject"):
            if element.get(attribute):
                element.set(attribute, element.get(attribute).replace("aaaa", "cccc"))
    assert _status(registry.register(reused)) == (ebrim.FAILURE, ["XDSDuplicateUniqueIdInRegistry"])


def _replacement(target_uuid: str, patient: str = PATIENT) -> etree._Element:
    """RegisterTwoDocuments reduced to its first document, renamed, replacing ``target_uuid``."""
    request = copy.deepcopy(corpus_request(TWO_DOCS))
    submission = Submission.parse(request)
    object_list = request[0]
    object_list.remove(submission.document_entries[1].element)
    object_list.remove(submission.associations[1].element)
    for element in request.iter(tag=etree.Element):
        for attribute, value in element.attrib.items():
            element.set(attribute, value.replace("-df4873be9", "-df4873be7"))
        if element.get("value") in ("1.42.20120601170229.42", "1.42.20120601170229.44"):
            element.set("value", element.get("value") + ".7")
        if element.get("value") == PATIENT:
            element.set("value", patient)
    rplc = etree.SubElement(
        object_list,
        ebrim.q("rim", "Association"),
        id="rplc01",
        associationType=ebrim.RPLC,
        sourceObject="urn:uuid:aabbccdd-bdda-424e-8c96-df4873be7501",
        targetObject=target_uuid,
    )
    assert rplc is not None
    return request


def test_iti42_rplc_deprecates_target_and_second_rplc_fails(registry_engine: Engine) -> None:
    registry = EmbeddedRegistry(registry_engine)
    registry.register(corpus_request(TWO_DOCS))
    target = "urn:uuid:aabbccdd-bdda-424e-8c96-df4873be9501"

    assert _status(registry.register(_replacement(target))) == (ebrim.SUCCESS, [])
    with registry_engine.connect() as connection:
        status = connection.execute(
            select(registry_objects.c.status).where(registry_objects.c.entry_uuid == target)
        ).scalar_one()
    assert status == ebrim.STATUS_DEPRECATED

    again = _replacement(target)
    for element in again.iter(tag=etree.Element):
        for attribute, value in element.attrib.items():
            element.set(
                attribute,
                value.replace("-df4873be7", "-df4873be6")
                .replace("229.42.7", "229.42.8")
                .replace("229.44.7", "229.44.8"),
            )
    assert _status(registry.register(again)) == (
        ebrim.FAILURE,
        ["XDSRegistryDeprecatedDocumentError"],
    )


def test_iti42_rplc_errors_unknown_target_and_other_patient(registry_engine: Engine) -> None:
    registry = EmbeddedRegistry(registry_engine)
    registry.register(corpus_request(TWO_DOCS))
    unknown = _replacement("urn:uuid:11111111-2222-3333-4444-555555555555")
    assert _status(registry.register(unknown)) == (ebrim.FAILURE, ["UnresolvedReferenceException"])

    other = _replacement(
        "urn:uuid:aabbccdd-bdda-424e-8c96-df4873be9501", patient="other^^^&1.2.3.45.4.3.2.1&ISO"
    )
    assert _status(registry.register(other)) == (ebrim.FAILURE, ["XDSPatientIdDoesNotMatch"])


def test_iti42_error_in_second_document_stores_nothing(registry_engine: Engine) -> None:
    registry = EmbeddedRegistry(registry_engine)
    registry.register(corpus_request("dcm4cheexds-ResubmitInitialDoc.xml"))
    # Second DE of RegisterTwoDocuments reuses the registered uniqueId with another hash.
    request = copy.deepcopy(corpus_request(TWO_DOCS))
    second = Submission.parse(request).document_entries[1]
    for ei in second.element.iter(RIM_EXTERNAL_IDENTIFIER):
        if ei.get("identificationScheme") == ebrim.DE_UNIQUE_ID:
            ei.set("value", "1.42.20120430135820.36")
    second.set_slot("size", ["4"])
    second.set_slot("hash", ["0123456789abcdef0123456789abcdef01234567"])
    before = _count(registry_engine, registry_objects)

    status, codes = _status(registry.register(request))
    assert (status, codes) == (ebrim.FAILURE, ["XDSNonIdenticalHash"])
    assert _count(registry_engine, registry_objects) == before
    with registry_engine.connect() as connection:
        assert (
            connection.execute(
                select(registry_objects).where(
                    registry_objects.c.unique_id == "1.42.20120601170229.42"
                )
            ).first()
            is None
        )


def test_iti42_concurrent_same_submission_set_unique_id(registry_engine: Engine) -> None:
    registry = EmbeddedRegistry(registry_engine)
    first = copy.deepcopy(corpus_request("dcm4cheexds-ResubmitInitialDoc.xml"))
    second = copy.deepcopy(corpus_request("dcm4cheexds-ResubmitWrongHash.xml"))
    # Same SubmissionSet uniqueId, same document content, different entryUUIDs.
    Submission.parse(second).document_entries[0].set_slot(
        "hash", ["e543712c0e10501972de13a5bfcbe826c49feb75"]
    )
    for ei in second.iter(RIM_EXTERNAL_IDENTIFIER):
        if ei.get("value") == "1.42.20120430135820.37.0.2":
            ei.set("value", "1.42.20120430135820.37.0.1")

    results: list[tuple[str, list[str]]] = []
    barrier = threading.Barrier(2)

    def run(request: etree._Element) -> None:
        barrier.wait()
        results.append(_status(registry.register(request)))

    threads = [threading.Thread(target=run, args=(r,)) for r in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(results) == sorted(
        [(ebrim.SUCCESS, []), (ebrim.FAILURE, ["XDSDuplicateUniqueIdInRegistry"])]
    )
    with registry_engine.connect() as connection:
        count = connection.execute(
            select(func.count()).where(registry_objects.c.kind == "SubmissionSet")
        ).scalar_one()
    assert count == 1
