"""Metadata validation of a submission for ITI-41 (repository) and ITI-42 (registry).

Checks what ITI TF-3 Table 4.3.1-3 requires of a Document Source (DS column) and, for the
registry role, what a repository must add (hash, size, repositoryUniqueId: DR column),
plus the structural rules of ITI TF-3 4.2.3 and 4.1 (one SubmissionSet, HasMember,
references, matching patient ids, uniqueIds unique in the message).

Every error names the attribute and the object in its codeContext, and its location is the
object's id (or uniqueId when that is what is wrong).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lxml.etree import _Element

from xds import ebrim
from xds.errors import ErrorCode, RegistryError
from xds.metadata import (
    FOLDER_LIMITED_METADATA,
    RIM_CLASSIFICATION,
    RIM_EXTERNAL_IDENTIFIER,
    RIM_SLOT,
    RIM_VALUE,
    Association,
    DocumentEntry,
    RegistryObjectView,
    Submission,
    SubmissionSet,
    code_of,
    slot_values,
)

OID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
# CX as ITI TF-3 4.2.3.1.7 restricts it: ID^^^&<assigning authority OID>&ISO
CX = re.compile(r"^([^^&~|\\]+)\^\^\^&((0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+)&ISO$")
DTM = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2})?)?)?)?)?$")
SHA1 = re.compile(r"^[0-9a-fA-F]{40}$")
INTEGER = re.compile(r"^[0-9]+$")
UUID_URN = re.compile(
    r"^urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)

MAX_SLOT_VALUE = 256  # rim.xsd LongName
MAX_OID = 64
MAX_DOCUMENT_UNIQUE_ID = 128

# (scheme, attribute name, minimum, maximum or None) for the DocumentEntry coded attributes
# that the DS column of ITI TF-3 Table 4.3.1-3 marks R.
DE_REQUIRED_CODES = (
    (ebrim.DE_CLASS_CODE, "classCode", 1, 1),
    (ebrim.DE_CONFIDENTIALITY_CODE, "confidentialityCode", 1, None),
    (ebrim.DE_FORMAT_CODE, "formatCode", 1, 1),
    (ebrim.DE_HEALTHCARE_FACILITY_TYPE_CODE, "healthcareFacilityTypeCode", 1, 1),
    (ebrim.DE_PRACTICE_SETTING_CODE, "practiceSettingCode", 1, 1),
    (ebrim.DE_TYPE_CODE, "typeCode", 1, 1),
)
DE_OPTIONAL_CODES = ((ebrim.DE_EVENT_CODE, "eventCodeList"),)
# Slots that carry a single value when present.
DE_SINGLE_SLOTS = (
    "creationTime",
    "hash",
    "size",
    "repositoryUniqueId",
    "languageCode",
    "sourcePatientId",
    "serviceStartTime",
    "serviceStopTime",
    "legalAuthenticator",
    "URI",
)
ROLES = ("repository", "registry")


def is_uuid(value: str | None) -> bool:
    """True for an ``urn:uuid:`` reference, which may name an object outside the message."""
    return bool(value) and UUID_URN.match(value or "") is not None


def is_dtm(value: str) -> bool:
    """True for an ITI TF-3 DTM value (UTC, YYYY[MM[DD[hh[mm[ss]]]]]) with sane field ranges."""
    if not DTM.match(value):
        return False
    limits = ((4, 6, 1, 12), (6, 8, 1, 31), (8, 10, 0, 23), (10, 12, 0, 59), (12, 14, 0, 59))
    for start, end, low, high in limits:
        if len(value) >= end and not low <= int(value[start:end]) <= high:
            return False
    return True


def is_oid(value: str | None) -> bool:
    return bool(value) and len(value or "") <= MAX_OID and OID.match(value or "") is not None


@dataclass
class _Codes:
    """The error codes a role reports with."""

    metadata: str
    unresolved: str
    duplicate_in_message: str


def _codes(role: str) -> _Codes:
    if role == "repository":
        return _Codes(
            ErrorCode.XDSRepositoryMetadataError,
            ErrorCode.XDSRepositoryMetadataError,
            ErrorCode.XDSRepositoryDuplicateUniqueIdInMessage,
        )
    return _Codes(
        ErrorCode.XDSRegistryMetadataError,
        ErrorCode.UnresolvedReferenceException,
        ErrorCode.XDSRegistryDuplicateUniqueIdInMessage,
    )


class _Validator:
    """Collects the errors of one submission; one method per object kind."""

    def __init__(self, submission: Submission, role: str) -> None:
        self.submission = submission
        self.role = role
        # ITI-41 lets the repository check shallowly and leave the full check to the registry
        # (ITI TF-2 3.41.4.1.3): it refuses only what it cannot store or forward faithfully.
        self.full = role == "registry"
        self.codes = _codes(role)
        self.errors: list[RegistryError] = []

    def error(self, context: str, location: str | None, code: str | None = None) -> None:
        self.errors.append(RegistryError(code or self.codes.metadata, context, location))

    # -- whole submission -------------------------------------------------------------------

    def run(self) -> list[RegistryError]:
        submission = self.submission
        for duplicate in sorted(set(submission.duplicate_ids)):
            self.error(f"the id '{duplicate}' is used by more than one object", duplicate)

        count = len(submission.submission_sets)
        if count != 1:
            self.error(
                f"a submission carries exactly one SubmissionSet; this one has {count}",
                ", ".join(ss.entry_uuid for ss in submission.submission_sets) or None,
            )
        for package in submission.unlabelled_packages:
            self.error(
                f"RegistryPackage {package.entry_uuid} is classified neither as SubmissionSet "
                f"({ebrim.SUBMISSION_SET_NODE}) nor as Folder ({ebrim.FOLDER_NODE})",
                package.entry_uuid,
            )

        for entry in submission.document_entries:
            self.document_entry(entry)
        for submission_set in submission.submission_sets:
            self.submission_set(submission_set)
        for folder in submission.folders:
            self.common(folder, "Folder")
            if folder.has_node(FOLDER_LIMITED_METADATA):
                self.error(
                    f"Folder {folder.id} is marked limitedMetadata, not allowed in XDS", folder.id
                )
        for association in submission.associations:
            self.association(association)
        for classification in submission.classifications:
            self.reference(classification, "classifiedObject", classification.get("id", ""))

        self.membership()
        self.patient_ids()
        self.unique_ids()
        return self.errors

    # -- shared per-object checks ----------------------------------------------------------

    def common(self, view: RegistryObjectView, kind: str) -> None:
        """Slots, nested Classifications and ExternalIdentifiers of any object."""
        self.slots(view.element, f"{kind} {view.id}", view.id)
        for classification in view.element.iterchildren(RIM_CLASSIFICATION):
            label = f"Classification {classification.get('id', '')} of {kind} {view.id}"
            self.slots(classification, label, view.id)
            self.nested_reference(classification, "classifiedObject", view, label)
        for identifier in view.element.iterchildren(RIM_EXTERNAL_IDENTIFIER):
            label = f"ExternalIdentifier {identifier.get('id', '')} of {kind} {view.id}"
            self.nested_reference(identifier, "registryObject", view, label)

    def slots(self, element: _Element, label: str, location: str) -> None:
        seen: set[str] = set()
        for slot in element.iterchildren(RIM_SLOT):
            name = slot.get("name", "")
            if name in seen:
                self.error(f"{label} has the slot '{name}' more than once", location)
            seen.add(name)
            for value in slot.iter(RIM_VALUE):
                if len(value.text or "") > MAX_SLOT_VALUE:
                    self.error(
                        f"{label}: a value of slot '{name}' is {len(value.text or '')} characters "
                        f"long; the limit is {MAX_SLOT_VALUE}",
                        location,
                    )

    def nested_reference(
        self, element: _Element, attribute: str, owner: RegistryObjectView, label: str
    ) -> None:
        """A nested Classification/ExternalIdentifier must point at its owner (or be omitted)."""
        target = element.get(attribute)
        if target is None or target == owner.id:
            return
        if target not in self.submission.objects_by_id and not is_uuid(target):
            self.unresolved(label, attribute, target, owner.id)
            return
        self.error(f"{label} names {attribute}='{target}' but sits inside {owner.id}", owner.id)

    def reference(self, element: _Element, attribute: str, label_id: str) -> None:
        target = element.get(attribute)
        label = f"{etree_local(element)} {label_id}"
        if not target:
            self.error(f"{label} has no {attribute}", label_id)
        elif target not in self.submission.objects_by_id and not is_uuid(target):
            self.unresolved(label, attribute, target, label_id)

    def unresolved(self, label: str, attribute: str, target: str, location: str) -> None:
        self.error(
            f"{label}: {attribute}='{target}' names no object of this submission and is not "
            "a urn:uuid reference to an existing one",
            location,
            self.codes.unresolved,
        )

    def single_slot(self, view: RegistryObjectView, name: str, label: str) -> str | None:
        values = view.slot(name)
        if len(values) > 1:
            self.error(
                f"{label}: slot '{name}' has {len(values)} values; exactly one is allowed", view.id
            )
        return values[0] if values else None

    def required_slot(self, view: RegistryObjectView, name: str, label: str) -> str | None:
        value = self.single_slot(view, name, label)
        if not value:
            self.error(
                f"{label}: required attribute {name} (slot '{name}') is missing or empty", view.id
            )
        return value

    def coded(
        self,
        view: RegistryObjectView,
        scheme: str,
        attribute: str,
        label: str,
        minimum: int,
        maximum: int | None,
    ) -> None:
        elements = view.classification_elements(scheme)
        if len(elements) < minimum:
            self.error(f"{label}: required attribute {attribute} is missing", view.id)
        if maximum is not None and len(elements) > maximum:
            self.error(
                f"{label}: {attribute} appears {len(elements)} times; at most {maximum} allowed",
                view.id,
            )
        for element in elements:
            code = code_of(element)
            if not code.code:
                self.error(
                    f"{label}: {attribute} has an empty nodeRepresentation (the code)", view.id
                )
            schemes = slot_values(element, "codingScheme")
            if len(schemes) != 1 or not schemes[0]:
                self.error(
                    f"{label}: {attribute} '{code.code}' needs exactly one codingScheme "
                    f"slot value; it has {len(schemes)}",
                    view.id,
                )

    def identifier(
        self, view: RegistryObjectView, scheme: str, name: str, label: str
    ) -> str | None:
        value = view.external_identifier(scheme)
        if not value:
            self.error(
                f"{label}: required attribute {name} (ExternalIdentifier {scheme}) is missing",
                view.id,
            )
        return value

    def cx(self, value: str | None, attribute: str, label: str, location: str) -> None:
        if value and not CX.match(value):
            self.error(
                f"{label}: {attribute} '{value}' is not a CX of the form ID^^^&<OID>&ISO",
                location,
            )

    def dtm(self, value: str | None, attribute: str, label: str, location: str) -> None:
        if value and not is_dtm(value):
            self.error(
                f"{label}: {attribute} '{value}' is not a DTM (YYYY[MM[DD[hh[mm[ss]]]]], UTC)",
                location,
            )

    # -- DocumentEntry ---------------------------------------------------------------------

    def document_entry(self, entry: DocumentEntry) -> None:
        label = f"DocumentEntry {entry.id}"
        self.common(entry, "DocumentEntry")

        if entry.object_type == ebrim.DOCUMENT_ENTRY_ON_DEMAND:
            self.error(
                f"{label} is an On-Demand DocumentEntry; only stable entries are accepted", entry.id
            )
        elif entry.object_type != ebrim.DOCUMENT_ENTRY_STABLE:
            self.error(
                f"{label}: objectType '{entry.object_type or ''}' is not the stable DocumentEntry "
                f"type {ebrim.DOCUMENT_ENTRY_STABLE}",
                entry.id,
            )
        if not entry.mime_type:
            self.error(f"{label}: required attribute mimeType is missing", entry.id)
        if entry.has_node(ebrim.DE_LIMITED_METADATA):
            self.error(f"{label} is marked limitedMetadata, which XDS does not accept", entry.id)

        unique_id = entry.unique_id
        if not unique_id:
            self.identifier(entry, ebrim.DE_UNIQUE_ID, "XDSDocumentEntry.uniqueId", label)
        elif len(unique_id) > MAX_DOCUMENT_UNIQUE_ID or " " in unique_id:
            self.error(
                f"{label}: uniqueId '{unique_id}' is longer than 128 or has spaces", entry.id
            )
        if self.full:
            self.document_entry_attributes(entry, label)

        self.document_content_slots(entry, label)

    def document_entry_attributes(self, entry: DocumentEntry, label: str) -> None:
        """The attributes ITI TF-3 Table 4.3.1-3 requires, checked in full by the registry."""
        for scheme, attribute, minimum, maximum in DE_REQUIRED_CODES:
            self.coded(entry, scheme, attribute, label, minimum, maximum)
        for scheme, attribute in DE_OPTIONAL_CODES:
            self.coded(entry, scheme, attribute, label, 0, None)

        patient_id = self.identifier(
            entry, ebrim.DE_PATIENT_ID, "XDSDocumentEntry.patientId", label
        )
        self.cx(patient_id, "patientId", label, entry.id)

        for name in DE_SINGLE_SLOTS:
            self.single_slot(entry, name, label)
        self.dtm(self.required_slot(entry, "creationTime", label), "creationTime", label, entry.id)
        self.required_slot(entry, "languageCode", label)
        source_patient_id = self.required_slot(entry, "sourcePatientId", label)
        self.cx(source_patient_id, "sourcePatientId", label, entry.id)
        self.dtm(entry.service_start_time, "serviceStartTime", label, entry.id)
        self.dtm(entry.service_stop_time, "serviceStopTime", label, entry.id)

    def document_content_slots(self, entry: DocumentEntry, label: str) -> None:
        """hash, size, repositoryUniqueId: optional from a source, required towards a registry."""
        if self.role == "registry":
            for name in ("hash", "size", "repositoryUniqueId"):
                self.required_slot(entry, name, label)
        if entry.hash and not SHA1.match(entry.hash):
            self.error(
                f"{label}: hash '{entry.hash}' is not 40 hexadecimal digits (SHA-1)", entry.id
            )
        if entry.size and not INTEGER.match(entry.size):
            self.error(f"{label}: size '{entry.size}' is not a non-negative integer", entry.id)
        if entry.repository_unique_id and not is_oid(entry.repository_unique_id):
            self.error(
                f"{label}: repositoryUniqueId '{entry.repository_unique_id}' is not an OID "
                f"of at most {MAX_OID} characters",
                entry.id,
            )

    # -- SubmissionSet ---------------------------------------------------------------------

    def submission_set(self, submission_set: SubmissionSet) -> None:
        label = f"SubmissionSet {submission_set.id}"
        self.common(submission_set, "SubmissionSet")
        if submission_set.has_node(ebrim.SS_LIMITED_METADATA):
            self.error(
                f"{label} is marked limitedMetadata, which XDS does not accept", submission_set.id
            )

        if not self.full:
            return
        self.coded(submission_set, ebrim.SS_CONTENT_TYPE_CODE, "contentTypeCode", label, 1, 1)
        patient_id = self.identifier(
            submission_set, ebrim.SS_PATIENT_ID, "XDSSubmissionSet.patientId", label
        )
        self.cx(patient_id, "patientId", label, submission_set.id)
        for scheme, name in (
            (ebrim.SS_SOURCE_ID, "XDSSubmissionSet.sourceId"),
            (ebrim.SS_UNIQUE_ID, "XDSSubmissionSet.uniqueId"),
        ):
            value = self.identifier(submission_set, scheme, name, label)
            if value and not is_oid(value):
                self.error(
                    f"{label}: {name} '{value}' is not an OID of at most {MAX_OID} characters",
                    submission_set.id,
                )
        submission_time = self.required_slot(submission_set, "submissionTime", label)
        self.dtm(submission_time, "submissionTime", label, submission_set.id)

    # -- Associations and cross-object rules ------------------------------------------------

    def association(self, association: Association) -> None:
        label = f"Association {association.id}"
        self.slots(association.element, label, association.id)
        if not association.association_type:
            self.error(f"{label} has no associationType", association.id)
        self.reference(association.element, "sourceObject", association.id)
        self.reference(association.element, "targetObject", association.id)

        source = self.submission.objects_by_id.get(association.source or "")
        if association.association_type == ebrim.HAS_MEMBER and isinstance(source, SubmissionSet):
            status = association.slot("SubmissionSetStatus")
            if status not in (["Original"], ["Reference"]):
                self.error(
                    f"{label}: a HasMember from the SubmissionSet needs the slot "
                    f"SubmissionSetStatus = Original or Reference; found {status or 'none'}",
                    association.id,
                )

    def membership(self) -> None:
        """Every DocumentEntry of the message is a member of the SubmissionSet (HasMember)."""
        submission_set = self.submission.submission_set
        if submission_set is None:
            return
        members = {
            a.target
            for a in self.submission.associations
            if a.association_type == ebrim.HAS_MEMBER and a.source == submission_set.id
        }
        for entry in self.submission.document_entries:
            if entry.id not in members:
                self.error(
                    f"DocumentEntry {entry.id} is not linked to SubmissionSet {submission_set.id} "
                    "by a HasMember Association",
                    entry.id,
                )

    def patient_ids(self) -> None:
        submission_set = self.submission.submission_set
        if submission_set is None or not submission_set.patient_id:
            return
        expected = submission_set.patient_id
        for view in [*self.submission.document_entries, *self.submission.folders]:
            if view.patient_id and view.patient_id != expected:  # type: ignore[attr-defined]
                self.error(
                    f"{type(view).__name__} {view.id} has patientId '{view.patient_id}' "  # type: ignore[attr-defined]
                    f"but SubmissionSet {submission_set.id} has '{expected}'",
                    view.id,
                    ErrorCode.XDSPatientIdDoesNotMatch,
                )

    def unique_ids(self) -> None:
        seen: dict[str, str] = {}
        objects: list[RegistryObjectView] = [
            *self.submission.document_entries,
            *self.submission.submission_sets,
            *self.submission.folders,
        ]
        for view in objects:
            unique_id = view.unique_id  # type: ignore[attr-defined]
            if not unique_id:
                continue
            if unique_id in seen:
                self.error(
                    f"uniqueId '{unique_id}' is used by both {seen[unique_id]} and {view.id} "
                    "in this message",
                    unique_id,
                    self.codes.duplicate_in_message,
                )
            else:
                seen[unique_id] = view.id


def etree_local(element: _Element) -> str:
    return element.tag.rsplit("}", 1)[-1]


def validate_submission(submission: Submission, *, role: str) -> list[RegistryError]:
    """Check a submission's metadata; return the errors (empty when it is acceptable).

    Parameters
    ----------
    submission : Submission
        The parsed SubmitObjectsRequest.
    role : {"repository", "registry"}
        "repository" checks an ITI-41 request as its receiver and reports
        XDSRepositoryMetadataError / XDSRepositoryDuplicateUniqueIdInMessage; "registry" checks
        an ITI-42 request and reports XDSRegistryMetadataError, UnresolvedReferenceException,
        XDSRegistryDuplicateUniqueIdInMessage, and also requires hash, size and
        repositoryUniqueId on every DocumentEntry.

    References
    ----------
    ITI TF-3 Table 4.3.1-3 (optionality), 4.2.3 (encoding), Table 4.2.4.1-2 (error codes).
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    return _Validator(submission, role).run()
