"""ITI-42 Register Document Set-b, as answered by the embedded Document Registry.

The whole submission is registered in one database transaction, or nothing is
(ITI-42 3.42.4.1.3). Uniqueness is decided by database constraints: when a concurrent
transaction wins a race the constraint fails, the transaction is retried once more, and the
fresh read then produces the proper XDS error instead of a server error.
"""

from __future__ import annotations

import copy
import logging
import uuid

from lxml import etree
from lxml.etree import _Element
from sqlalchemy import select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from xds import ebrim
from xds.errors import ErrorCode, RegistryError, XdsError, registry_response
from xds.metadata import (
    RIM_CLASSIFICATION,
    Association,
    DocumentEntry,
    RegistryObjectView,
    Submission,
)
from xds.registry.store import (
    KIND_ASSOCIATION,
    KIND_DOCUMENT_ENTRY,
    KIND_FOLDER,
    KIND_SUBMISSION_SET,
    registry_codes,
    registry_objects,
    registry_unique_ids,
)
from xds.validation import is_uuid, validate_submission

logger = logging.getLogger(__name__)

# Attributes that hold a reference to another object's id.
REFERENCE_ATTRIBUTES = ("classifiedObject", "registryObject", "sourceObject", "targetObject")
# Where a Classification may go inside an object: before these children (rim.xsd order).
_AFTER_CLASSIFICATIONS = {
    ebrim.q("rim", "ExternalIdentifier"),
    ebrim.q("rim", "ContentVersionInfo"),
    ebrim.q("rim", "RegistryObjectList"),
}
RELATIONSHIPS_NEEDING_TARGET = ebrim.DOCUMENT_RELATIONSHIPS
ATTEMPTS = 3


def register(engine: Engine, submit_objects_request: _Element) -> _Element:
    """Register a SubmitObjectsRequest; return the ``rs:RegistryResponse``.

    References
    ----------
    ITI TF-2 3.42.4.1.3 (registry expected actions), ITI TF-3 Table 4.2.4.1-2.
    """
    request = copy.deepcopy(submit_objects_request)
    try:
        submission = Submission.parse(request)
    except ValueError as exc:
        return registry_response([RegistryError(ErrorCode.XDSRegistryMetadataError, str(exc))])

    errors = validate_submission(submission, role="registry")
    if errors:
        return registry_response(errors)

    _assign_uuids(submission)
    submission = Submission.parse(submission.request)
    try:
        _fold_top_level_classifications(submission)
    except XdsError as exc:
        return registry_response(exc.errors)

    for attempt in range(ATTEMPTS):
        try:
            with engine.begin() as connection:
                _check_against_registry(connection, submission)
                _store(connection, submission)
                _deprecate_replaced(connection, submission)
        except XdsError as exc:
            return registry_response(exc.errors)
        except IntegrityError:
            # Another transaction registered a conflicting object first; read again.
            logger.info("ITI-42 registration raced with another one; retry %d", attempt + 1)
            continue
        ss = submission.submission_set
        logger.info(
            "ITI-42 registered submission set %s with %d document entries",
            ss.unique_id if ss else None,
            len(submission.document_entries),
        )
        return registry_response([])

    return registry_response(
        [RegistryError(ErrorCode.XDSRegistryBusy, "conflicting concurrent registrations; retry")]
    )


# -- preparing the objects -----------------------------------------------------------------


def _assign_uuids(submission: Submission) -> None:
    """Give every symbolic id a fresh urn:uuid and rewrite every reference to it."""
    object_list = submission.request.find(ebrim.q("rim", "RegistryObjectList"))
    assert object_list is not None  # Submission.parse checked it
    mapping: dict[str, str] = {}
    for element in object_list.iter(tag=etree.Element):
        object_id = element.get("id")
        if object_id and not is_uuid(object_id) and object_id not in mapping:
            mapping[object_id] = f"urn:uuid:{uuid.uuid4()}"
    for element in object_list.iter(tag=etree.Element):
        for attribute in ("id", *REFERENCE_ATTRIBUTES):
            value = element.get(attribute)
            if value in mapping:
                element.set(attribute, mapping[value])


def _fold_top_level_classifications(submission: Submission) -> None:
    """Move sibling Classifications into the object they classify, so each row is whole."""
    for classification in submission.classifications:
        target = submission.objects_by_id.get(classification.get("classifiedObject", ""))
        if not isinstance(target, RegistryObjectView):
            raise XdsError(
                ErrorCode.XDSRegistryMetadataError,
                f"Classification {classification.get('id')} classifies "
                f"{classification.get('classifiedObject')}, which is not in this submission; "
                "this registry does not classify existing objects",
                classification.get("id"),
            )
        anchor = next(
            (child for child in target.element if child.tag in _AFTER_CLASSIFICATIONS), None
        )
        if anchor is None:
            target.element.append(classification)
        else:
            anchor.addprevious(classification)


# -- checks that need the database -----------------------------------------------------------


def _check_against_registry(connection: Connection, submission: Submission) -> None:
    errors: list[RegistryError] = []
    new_ids = [
        view.id
        for view in (
            *submission.document_entries,
            *submission.submission_sets,
            *submission.folders,
            *submission.associations,
        )
    ]
    taken = (
        connection.execute(
            select(registry_objects.c.entry_uuid).where(registry_objects.c.entry_uuid.in_(new_ids))
        )
        .scalars()
        .all()
    )
    for entry_uuid in taken:
        errors.append(
            RegistryError(
                ErrorCode.XDSRegistryMetadataError,
                f"entryUUID {entry_uuid} is already used by a registered object; a new object "
                "needs a new entryUUID (or a symbolic id)",
                entry_uuid,
            )
        )

    for entry in submission.document_entries:
        errors.extend(_check_document_unique_id(connection, entry))
    for package in (*submission.submission_sets, *submission.folders):
        existing = _registered_unique_id(connection, package.unique_id)  # type: ignore[attr-defined]
        if existing is not None:
            errors.append(
                RegistryError(
                    ErrorCode.XDSDuplicateUniqueIdInRegistry,
                    f"{type(package).__name__} {package.id}: uniqueId "
                    f"{package.unique_id} is already used by "  # type: ignore[attr-defined]
                    f"{existing.kind} {existing.entry_uuid}",
                    package.unique_id,  # type: ignore[attr-defined]
                )
            )
    for association in submission.associations:
        errors.extend(_check_association(connection, submission, association))

    if errors:
        raise XdsError.of(errors)


def _registered_unique_id(connection: Connection, unique_id: str | None):  # type: ignore[no-untyped-def]
    return connection.execute(
        select(registry_unique_ids).where(registry_unique_ids.c.unique_id == unique_id)
    ).first()


def _check_document_unique_id(connection: Connection, entry: DocumentEntry) -> list[RegistryError]:
    """A known DocumentEntry uniqueId is accepted again only with the same hash and size."""
    existing = _registered_unique_id(connection, entry.unique_id)
    if existing is None:
        return []
    if existing.kind != KIND_DOCUMENT_ENTRY:
        return [
            RegistryError(
                ErrorCode.XDSDuplicateUniqueIdInRegistry,
                f"DocumentEntry {entry.id}: uniqueId {entry.unique_id} is already used by "
                f"{existing.kind} {existing.entry_uuid}",
                entry.unique_id,
            )
        ]
    errors = []
    if (existing.hash or "").lower() != (entry.hash or "").lower():
        errors.append(
            RegistryError(
                ErrorCode.XDSNonIdenticalHash,
                f"document uniqueId {entry.unique_id} is already registered with hash "
                f"{existing.hash}; this submission gives {entry.hash}",
                entry.unique_id,
            )
        )
    if existing.size != int(entry.size or -1):
        errors.append(
            RegistryError(
                ErrorCode.XDSNonIdenticalSize,
                f"document uniqueId {entry.unique_id} is already registered with size "
                f"{existing.size}; this submission gives {entry.size}",
                entry.unique_id,
            )
        )
    return errors


def _check_association(
    connection: Connection, submission: Submission, association: Association
) -> list[RegistryError]:
    """Ends outside the submission must be registered; replacement targets must be Approved."""
    errors: list[RegistryError] = []
    registered = {}
    for end in (association.source, association.target):
        if end in submission.objects_by_id:
            continue
        row = connection.execute(
            select(registry_objects).where(registry_objects.c.entry_uuid == end)
        ).first()
        if row is None:
            errors.append(
                RegistryError(
                    ErrorCode.UnresolvedReferenceException,
                    f"Association {association.id} refers to {end}, which is neither in this "
                    "submission nor registered",
                    association.id,
                )
            )
        else:
            registered[end] = row
    if errors or association.association_type not in RELATIONSHIPS_NEEDING_TARGET:
        return errors

    target = registered.get(association.target)
    source = submission.objects_by_id.get(association.source or "")
    if target is None or target.kind != KIND_DOCUMENT_ENTRY:
        return [
            RegistryError(
                ErrorCode.XDSRegistryMetadataError,
                f"Association {association.id} ({association.association_type}) must target a "
                f"registered DocumentEntry; {association.target} is not one",
                association.id,
            )
        ]
    if association.association_type in ebrim.REPLACING_RELATIONSHIPS and (
        target.status != ebrim.STATUS_APPROVED
    ):
        errors.append(
            RegistryError(
                ErrorCode.XDSRegistryDeprecatedDocumentError,
                f"Association {association.id} replaces DocumentEntry {target.entry_uuid} "
                f"(uniqueId {target.unique_id}), which is not Approved",
                target.entry_uuid,
            )
        )
    if isinstance(source, DocumentEntry) and source.patient_id != target.patient_id:
        errors.append(
            RegistryError(
                ErrorCode.XDSPatientIdDoesNotMatch,
                f"Association {association.id}: DocumentEntry {source.id} and its target "
                f"{target.entry_uuid} belong to different patients",
                source.id,
            )
        )
    return errors


# -- writing ---------------------------------------------------------------------------------


def _xml(element: _Element) -> str:
    return etree.tostring(element, encoding="unicode")


def _codes_of(view: RegistryObjectView) -> list[dict]:
    rows = []
    for classification in view.element.iterchildren(RIM_CLASSIFICATION):
        scheme = classification.get("classificationScheme")
        code = classification.get("nodeRepresentation")
        if not scheme or not code:
            continue
        schemes = view.classifications(scheme)
        coding_scheme = next((c.scheme for c in schemes if c.code == code), None) or ""
        rows.append(
            {"entry_uuid": view.id, "scheme": scheme, "code": code, "coding_scheme": coding_scheme}
        )
    return rows


def _store(connection: Connection, submission: Submission) -> None:
    objects: list[dict] = []
    unique_ids: list[dict] = []
    codes: list[dict] = []
    base = {column.name: None for column in registry_objects.columns}

    for entry in submission.document_entries:
        objects.append(
            {
                **base,
                "entry_uuid": entry.id,
                "kind": KIND_DOCUMENT_ENTRY,
                "unique_id": entry.unique_id,
                "patient_id": entry.patient_id,
                "status": ebrim.STATUS_APPROVED,
                "object_type": entry.object_type,
                "mime_type": entry.mime_type,
                "hash": (entry.hash or "").lower(),
                "size": int(entry.size or 0),
                "repository_unique_id": entry.repository_unique_id,
                "creation_time": entry.creation_time,
                "service_start_time": entry.service_start_time,
                "service_stop_time": entry.service_stop_time,
                "xml": _xml(entry.element),
            }
        )
        codes.extend(_codes_of(entry))
        if _registered_unique_id(connection, entry.unique_id) is None:
            unique_ids.append(
                {
                    "unique_id": entry.unique_id,
                    "kind": KIND_DOCUMENT_ENTRY,
                    "entry_uuid": entry.id,
                    "hash": (entry.hash or "").lower(),
                    "size": int(entry.size or 0),
                }
            )

    for kind, packages in (
        (KIND_SUBMISSION_SET, submission.submission_sets),
        (KIND_FOLDER, submission.folders),
    ):
        for package in packages:
            objects.append(
                {
                    **base,
                    "entry_uuid": package.id,
                    "kind": kind,
                    "unique_id": package.unique_id,
                    "patient_id": package.patient_id,  # type: ignore[attr-defined]
                    "status": ebrim.STATUS_APPROVED,
                    "submission_time": package.first_slot_value("submissionTime"),
                    "source_id": package.external_identifier(ebrim.SS_SOURCE_ID),
                    "xml": _xml(package.element),
                }
            )
            codes.extend(_codes_of(package))
            unique_ids.append(
                {
                    "unique_id": package.unique_id,
                    "kind": kind,  # type: ignore[attr-defined]
                    "entry_uuid": package.id,
                    "hash": None,
                    "size": None,
                }
            )

    for association in submission.associations:
        objects.append(
            {
                **base,
                "entry_uuid": association.id,
                "kind": KIND_ASSOCIATION,
                "status": ebrim.STATUS_APPROVED,
                "association_type": association.association_type,
                "source_object": association.source,
                "target_object": association.target,
                "xml": _xml(association.element),
            }
        )

    connection.execute(registry_objects.insert(), objects)
    if codes:
        connection.execute(registry_codes.insert(), codes)
    if unique_ids:
        connection.execute(registry_unique_ids.insert(), unique_ids)


def _deprecate_replaced(connection: Connection, submission: Submission) -> None:
    """RPLC / XFRM_RPLC: the replaced DocumentEntry becomes Deprecated (ITI TF-3 4.2.2.2)."""
    for association in submission.associations:
        if association.association_type not in ebrim.REPLACING_RELATIONSHIPS:
            continue
        result = connection.execute(
            update(registry_objects)
            .where(registry_objects.c.entry_uuid == association.target)
            .where(registry_objects.c.status == ebrim.STATUS_APPROVED)
            .values(status=ebrim.STATUS_DEPRECATED)
        )
        # Zero rows: a concurrent submission deprecated it after our check.
        if result.rowcount != 1:
            raise XdsError(
                ErrorCode.XDSRegistryDeprecatedDocumentError,
                f"DocumentEntry {association.target} was deprecated by another submission",
                association.target,
            )
