"""ITI-18 stored queries about submission sets and relationships (ITI TF-2 3.18.4.1.2.3.7).

* FindSubmissionSets: a patient's SubmissionSets, by source, time, author and content type.
* GetSubmissionSetAndContents: one SubmissionSet, its DocumentEntries and the HasMember
  Associations between them (the embedded registry stores no Folders, so none come back).
* GetDocumentsAndAssociations: DocumentEntries and every Association that touches them.
* GetRelatedDocuments: a DocumentEntry and the ones linked to it by the given relationship
  types (RPLC, APND, XFRM, XFRM_RPLC, signs ...). A consumer holding a deprecated imaging
  manifest follows its RPLC this way to the manifest that replaced it.

Each query takes a connection and the parsed ``Parameters`` and returns the rows to answer
with, in answer order; ``iti18.stored_query`` builds the response.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from lxml import etree
from sqlalchemy import select
from sqlalchemy.engine import Connection, Row
from sqlalchemy.sql.elements import ColumnElement

from xds import ebrim
from xds.errors import ErrorCode, XdsError
from xds.metadata import RIM_CLASSIFICATION, slot_values
from xds.registry.iti18_common import (
    Parameters,
    associations_touching,
    code_conditions,
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

SUBMISSION_TIME_PARAMETERS = {
    "$XDSSubmissionSetSubmissionTimeFrom": ("submission_time", ">="),
    "$XDSSubmissionSetSubmissionTimeTo": ("submission_time", "<"),
}


# -- FindSubmissionSets ----------------------------------------------------------------------


def find_submission_sets(connection: Connection, parameters: Parameters) -> list[Row]:
    conditions = patient_conditions(parameters, "$XDSSubmissionSet", KIND_SUBMISSION_SET)
    source_ids = parameters.values("$XDSSubmissionSetSourceId")
    if source_ids:
        conditions.append(registry_objects.c.source_id.in_(source_ids))
    conditions.extend(time_conditions(parameters, SUBMISSION_TIME_PARAMETERS))
    conditions.extend(
        code_conditions(parameters, "$XDSSubmissionSetContentType", ebrim.SS_CONTENT_TYPE_CODE)
    )
    author = parameters.single("$XDSSubmissionSetAuthorPerson")
    rows = select_objects(connection, *conditions)

    # authorPerson lives in a Slot of the author Classification, which has no column: the
    # patient's few SubmissionSets are matched here rather than in SQL.
    if author is not None:
        pattern = like_pattern(author)
        rows = [row for row in rows if any(pattern.fullmatch(p) for p in _author_persons(row))]
    return rows


def like_pattern(value: str) -> re.Pattern[str]:
    """The SQL LIKE pattern ``value`` (``%`` any run, ``_`` any one character) as a regex."""
    wildcards = {"%": ".*", "_": "."}
    return re.compile("".join(wildcards.get(char, re.escape(char)) for char in value), re.DOTALL)


def _author_persons(row: Row) -> list[str]:
    """The authorPerson values of a stored SubmissionSet."""
    package = etree.fromstring(row.xml)
    persons = []
    for classification in package.iterchildren(RIM_CLASSIFICATION):
        if classification.get("classificationScheme") == ebrim.SS_AUTHOR:
            persons.extend(slot_values(classification, "authorPerson"))
    return persons


# -- GetSubmissionSetAndContents ---------------------------------------------------------------


def get_submission_set_and_contents(connection: Connection, parameters: Parameters) -> list[Row]:
    by_uuid, (value,) = parameters.one_of(
        "GetSubmissionSetAndContents",
        "$XDSSubmissionSetEntryUUID",
        "$XDSSubmissionSetUniqueId",
        single=True,
    )
    column = registry_objects.c.entry_uuid if by_uuid else registry_objects.c.unique_id
    submission_sets = select_objects(
        connection, registry_objects.c.kind == KIND_SUBMISSION_SET, column == value
    )
    if not submission_sets:
        return []
    submission_set = submission_sets[0]

    # The documents are the targets of the set's HasMember links, filtered as asked.
    members = select(registry_objects.c.target_object).where(
        registry_objects.c.kind == KIND_ASSOCIATION,
        registry_objects.c.association_type == ebrim.HAS_MEMBER,
        registry_objects.c.source_object == submission_set.entry_uuid,
    )
    conditions: list[ColumnElement[bool]] = [
        registry_objects.c.kind == KIND_DOCUMENT_ENTRY,
        registry_objects.c.entry_uuid.in_(members.scalar_subquery()),
    ]
    conditions.extend(
        code_conditions(parameters, "$XDSDocumentEntryFormatCode", ebrim.DE_FORMAT_CODE)
    )
    conditions.extend(
        code_conditions(
            parameters,
            "$XDSDocumentEntryConfidentialityCode",
            ebrim.DE_CONFIDENTIALITY_CODE,
            and_or=True,
        )
    )
    entry_types = parameters.values("$XDSDocumentEntryType")
    if entry_types:
        conditions.append(registry_objects.c.object_type.in_(entry_types))
    documents = select_objects(connection, *conditions)

    # Only the links to what is returned: a filtered-out document's link would dangle.
    returned = {document.entry_uuid for document in documents}
    links = [
        link
        for link in associations_touching(
            connection, [submission_set.entry_uuid], [ebrim.HAS_MEMBER]
        )
        if link.source_object == submission_set.entry_uuid and link.target_object in returned
    ]
    return [submission_set, *documents, *links]


# -- GetDocumentsAndAssociations and GetRelatedDocuments ---------------------------------------


def get_documents_and_associations(connection: Connection, parameters: Parameters) -> list[Row]:
    by_uuid, values = parameters.one_of(
        "GetDocumentsAndAssociations", "$XDSDocumentEntryEntryUUID", "$XDSDocumentEntryUniqueId"
    )
    documents = select_documents(connection, by_uuid, values)
    links = associations_touching(connection, [document.entry_uuid for document in documents])
    return [*documents, *links]


def get_related_documents(connection: Connection, parameters: Parameters) -> list[Row]:
    """The document, its related documents and the links; nothing when none is related."""
    by_uuid, values = parameters.one_of(
        "GetRelatedDocuments",
        "$XDSDocumentEntryEntryUUID",
        "$XDSDocumentEntryUniqueId",
        single=True,
    )
    types = parameters.required("$AssociationTypes")
    for association_type in types:
        if association_type not in ebrim.DOCUMENT_RELATIONSHIPS:
            raise XdsError(
                ErrorCode.XDSRegistryError,
                f"parameter $AssociationTypes: {association_type!r} is not a document "
                "relationship type; expected one of " + ", ".join(ebrim.DOCUMENT_RELATIONSHIPS),
                "$AssociationTypes",
            )

    # A uniqueId registered twice (identical resubmission) names several entries: all count.
    originals = select_documents(connection, by_uuid, values)
    original_uuids = [document.entry_uuid for document in originals]
    links = associations_touching(connection, original_uuids, types)
    if not links:
        return []
    other_ends = {link.source_object for link in links} | {link.target_object for link in links}
    related = select_documents(connection, True, sorted(other_ends - set(original_uuids)))
    return [*originals, *related, *links]


QUERIES: dict[str, Callable[[Connection, Parameters], list]] = {
    ebrim.FIND_SUBMISSION_SETS: find_submission_sets,
    ebrim.GET_SUBMISSION_SET_AND_CONTENTS: get_submission_set_and_contents,
    ebrim.GET_DOCUMENTS_AND_ASSOCIATIONS: get_documents_and_associations,
    ebrim.GET_RELATED_DOCUMENTS: get_related_documents,
}
QUERY_NAMES = {
    ebrim.FIND_SUBMISSION_SETS: "FindSubmissionSets",
    ebrim.GET_SUBMISSION_SET_AND_CONTENTS: "GetSubmissionSetAndContents",
    ebrim.GET_DOCUMENTS_AND_ASSOCIATIONS: "GetDocumentsAndAssociations",
    ebrim.GET_RELATED_DOCUMENTS: "GetRelatedDocuments",
}
