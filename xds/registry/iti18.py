"""ITI-18 Registry Stored Query, as answered by the embedded Document Registry.

Supported queries (ITI TF-2 3.18.4.1.2.3.7): FindDocuments, GetDocuments, GetSubmissionSets
and GetAssociations here; FindSubmissionSets, GetSubmissionSetAndContents,
GetDocumentsAndAssociations and GetRelatedDocuments in ``iti18_related``. Any other stored
query id gets XDSUnknownStoredQuery. Parameter syntax and checks: ``iti18_common``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from lxml import etree
from lxml.etree import _Element
from sqlalchemy.engine import Connection, Engine

from xds import ebrim
from xds.errors import ErrorCode, RegistryError, XdsError, append_error_list
from xds.registry import iti18_related
from xds.registry.iti18_common import (
    Parameters,
    associations_touching,
    code_conditions,
    parse_value,
    patient_conditions,
    select_documents,
    select_objects,
    time_conditions,
)
from xds.registry.store import (
    KIND_ASSOCIATION,
    KIND_DOCUMENT_ENTRY,
    KIND_SUBMISSION_SET,
    registry_objects,
)

logger = logging.getLogger(__name__)

# Code parameters of FindDocuments and the classification scheme each one filters on.
CODE_PARAMETERS = {
    "$XDSDocumentEntryClassCode": ebrim.DE_CLASS_CODE,
    "$XDSDocumentEntryTypeCode": ebrim.DE_TYPE_CODE,
    "$XDSDocumentEntryFormatCode": ebrim.DE_FORMAT_CODE,
    "$XDSDocumentEntryPracticeSettingCode": ebrim.DE_PRACTICE_SETTING_CODE,
    "$XDSDocumentEntryHealthcareFacilityTypeCode": ebrim.DE_HEALTHCARE_FACILITY_TYPE_CODE,
    "$XDSDocumentEntryEventCodeList": ebrim.DE_EVENT_CODE,
    "$XDSDocumentEntryConfidentialityCode": ebrim.DE_CONFIDENTIALITY_CODE,
}
AND_OR_PARAMETERS = {"$XDSDocumentEntryEventCodeList", "$XDSDocumentEntryConfidentialityCode"}
TIME_PARAMETERS = {
    "$XDSDocumentEntryCreationTimeFrom": ("creation_time", ">="),
    "$XDSDocumentEntryCreationTimeTo": ("creation_time", "<"),
    "$XDSDocumentEntryServiceStartTimeFrom": ("service_start_time", ">="),
    "$XDSDocumentEntryServiceStartTimeTo": ("service_start_time", "<"),
    "$XDSDocumentEntryServiceStopTimeFrom": ("service_stop_time", ">="),
    "$XDSDocumentEntryServiceStopTimeTo": ("service_stop_time", "<"),
}


# -- the queries ---------------------------------------------------------------------------------


def find_documents(connection: Connection, parameters: Parameters) -> list:
    conditions = patient_conditions(parameters, "$XDSDocumentEntry", KIND_DOCUMENT_ENTRY)
    entry_types = parameters.values("$XDSDocumentEntryType")
    if entry_types:
        conditions.append(registry_objects.c.object_type.in_(entry_types))

    for name, scheme in CODE_PARAMETERS.items():
        conditions.extend(code_conditions(parameters, name, scheme, name in AND_OR_PARAMETERS))
    conditions.extend(time_conditions(parameters, TIME_PARAMETERS))
    return select_objects(connection, *conditions)


def get_documents(connection: Connection, parameters: Parameters) -> list:
    by_uuid, values = parameters.one_of(
        "GetDocuments", "$XDSDocumentEntryEntryUUID", "$XDSDocumentEntryUniqueId"
    )
    return select_documents(connection, by_uuid, values)


def get_associations(connection: Connection, parameters: Parameters) -> list:
    return associations_touching(connection, parameters.entry_uuids("$uuid", required=True))


def get_submission_sets(connection: Connection, parameters: Parameters) -> list:
    """The SubmissionSets with a HasMember to the given objects, and those Associations."""
    uuids = parameters.entry_uuids("$uuid", required=True)
    associations = select_objects(
        connection,
        registry_objects.c.kind == KIND_ASSOCIATION,
        registry_objects.c.association_type == ebrim.HAS_MEMBER,
        registry_objects.c.target_object.in_(uuids),
    )
    sources = sorted({row.source_object for row in associations})
    submission_sets = select_objects(
        connection,
        registry_objects.c.kind == KIND_SUBMISSION_SET,
        registry_objects.c.entry_uuid.in_(sources),
    )
    member_links = [
        row
        for row in associations
        if row.source_object in {ss.entry_uuid for ss in submission_sets}
    ]
    return submission_sets + member_links


QUERIES: dict[str, Callable[[Connection, Parameters], list]] = {
    ebrim.FIND_DOCUMENTS: find_documents,
    ebrim.GET_DOCUMENTS: get_documents,
    ebrim.GET_SUBMISSION_SETS: get_submission_sets,
    ebrim.GET_ASSOCIATIONS: get_associations,
    **iti18_related.QUERIES,
}
QUERY_NAMES = {
    ebrim.FIND_DOCUMENTS: "FindDocuments",
    ebrim.GET_DOCUMENTS: "GetDocuments",
    ebrim.GET_SUBMISSION_SETS: "GetSubmissionSets",
    ebrim.GET_ASSOCIATIONS: "GetAssociations",
    **iti18_related.QUERY_NAMES,
}

# Kept importable from here for callers that parse stored-query values.
__all__ = ["QUERIES", "Parameters", "parse_value", "stored_query"]


# -- request and response ------------------------------------------------------------------------


def _response(status: str) -> _Element:
    return etree.Element(
        ebrim.q("query", "AdhocQueryResponse"),
        nsmap={"query": ebrim.QUERY, "rim": ebrim.RIM, "rs": ebrim.RS},
        status=status,
    )


def _failure(errors: list[RegistryError]) -> _Element:
    response = _response(ebrim.FAILURE)
    append_error_list(response, errors)
    # query.xsd requires the (here empty) object list even in a Failure.
    etree.SubElement(response, ebrim.q("rim", "RegistryObjectList"))
    return response


def _leaf(row) -> _Element:  # type: ignore[no-untyped-def]
    """The stored object, with its current availability status."""
    element = etree.fromstring(row.xml)
    element.set("status", row.status)
    return element


def stored_query(engine: Engine, adhoc_query_request: _Element) -> _Element:
    """Answer an ``query:AdhocQueryRequest``; return ``query:AdhocQueryResponse``.

    References
    ----------
    ITI TF-2 3.18.4.1 (request), 3.18.4.1.3 (response), ITI TF-3 Table 4.2.4.1-2.
    """
    option = adhoc_query_request.find(ebrim.q("query", "ResponseOption"))
    return_type = (
        option.get("returnType", ebrim.RETURN_OBJECT_REF)
        if option is not None
        else (ebrim.RETURN_OBJECT_REF)
    )
    adhoc_query = adhoc_query_request.find(ebrim.q("rim", "AdhocQuery"))
    if adhoc_query is None:
        return _failure(
            [
                RegistryError(
                    ErrorCode.XDSRegistryError, "AdhocQueryRequest without rim:AdhocQuery", None
                )
            ]
        )
    query_id = adhoc_query.get("id", "")
    query = QUERIES.get(query_id)
    if query is None:
        return _failure(
            [
                RegistryError(
                    ErrorCode.XDSUnknownStoredQuery,
                    f"stored query {query_id} is not supported; this registry answers "
                    + ", ".join(QUERY_NAMES.values()),
                    query_id,
                )
            ]
        )
    if return_type not in (ebrim.RETURN_LEAF_CLASS, ebrim.RETURN_OBJECT_REF):
        return _failure(
            [
                RegistryError(
                    ErrorCode.XDSRegistryError,
                    f"returnType {return_type} is not supported",
                    return_type,
                )
            ]
        )

    try:
        parameters = Parameters.parse(adhoc_query)
        with engine.connect() as connection:
            rows = query(connection, parameters)
    except XdsError as exc:
        return _failure(exc.errors)

    response = _response(ebrim.SUCCESS)
    object_list = etree.SubElement(response, ebrim.q("rim", "RegistryObjectList"))
    for row in rows:
        if return_type == ebrim.RETURN_LEAF_CLASS:
            object_list.append(_leaf(row))
        else:
            etree.SubElement(object_list, ebrim.q("rim", "ObjectRef"), id=row.entry_uuid)
    logger.info(
        "ITI-18 stored query %s (%s) returned %d objects",
        QUERY_NAMES[query_id],
        query_id,
        len(rows),
    )
    return response
