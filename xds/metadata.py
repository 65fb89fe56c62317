"""XDS metadata: a light object view over an ebRIM ``lcm:SubmitObjectsRequest``.

The lxml tree stays the source of truth: the views read from it and write into it, so
anything they do not model (extra slots, homeCommunityId, ObjectRefs) survives when the
repository forwards the same request to the registry.

References: ITI TF-3 4.1 to 4.3 (metadata attributes and their ebRIM encoding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from lxml import etree
from lxml.etree import _Element

from xds import ebrim

RIM_SLOT = ebrim.q("rim", "Slot")
RIM_VALUE_LIST = ebrim.q("rim", "ValueList")
RIM_VALUE = ebrim.q("rim", "Value")
RIM_NAME = ebrim.q("rim", "Name")
RIM_LOCALIZED_STRING = ebrim.q("rim", "LocalizedString")
RIM_CLASSIFICATION = ebrim.q("rim", "Classification")
RIM_EXTERNAL_IDENTIFIER = ebrim.q("rim", "ExternalIdentifier")
RIM_EXTRINSIC_OBJECT = ebrim.q("rim", "ExtrinsicObject")
RIM_REGISTRY_PACKAGE = ebrim.q("rim", "RegistryPackage")
RIM_ASSOCIATION = ebrim.q("rim", "Association")
RIM_OBJECT_REF = ebrim.q("rim", "ObjectRef")
RIM_REGISTRY_OBJECT_LIST = ebrim.q("rim", "RegistryObjectList")
LCM_SUBMIT_OBJECTS_REQUEST = ebrim.q("lcm", "SubmitObjectsRequest")

# Folder limitedMetadata node (ITI TF-3 4.2.5); not needed elsewhere, so kept here.
FOLDER_LIMITED_METADATA = "urn:uuid:2c144a76-29a9-4b7c-af54-b25409fe7d03"


@dataclass(frozen=True)
class Code:
    """A coded value: *nodeRepresentation*, the *codingScheme* slot, and the display name."""

    code: str
    scheme: str | None
    display: str | None


def slot_values(element: _Element, name: str) -> list[str]:
    """Values of the direct child ``rim:Slot`` called ``name`` (empty if there is none)."""
    for slot in element.iterchildren(RIM_SLOT):
        if slot.get("name") == name:
            return [(value.text or "") for value in slot.iter(RIM_VALUE)]
    return []


def display_name(element: _Element) -> str | None:
    """The first ``rim:Name/rim:LocalizedString/@value`` of an object, if any."""
    name = element.find(RIM_NAME)
    if name is None:
        return None
    localized = name.find(RIM_LOCALIZED_STRING)
    return None if localized is None else localized.get("value")


def code_of(classification: _Element) -> Code:
    """The coded value a coding Classification carries."""
    schemes = slot_values(classification, "codingScheme")
    return Code(
        code=classification.get("nodeRepresentation", ""),
        scheme=schemes[0] if schemes else None,
        display=display_name(classification),
    )


class RegistryObjectView:
    """Common reading and writing of slots, classifications and identifiers of one object."""

    def __init__(self, element: _Element) -> None:
        self.element = element
        # Top-level Classifications of the submission that point at this object.
        self.outer_classifications: list[_Element] = []

    @property
    def entry_uuid(self) -> str:
        return self.element.get("id", "")

    @property
    def id(self) -> str:
        return self.entry_uuid

    @property
    def home(self) -> str | None:
        return self.element.get("home")

    @property
    def status(self) -> str | None:
        return self.element.get("status")

    def slot(self, name: str) -> list[str]:
        """Values of the slot ``name``; an empty list when the slot is absent."""
        return slot_values(self.element, name)

    def first_slot_value(self, name: str) -> str | None:
        values = self.slot(name)
        return values[0] if values else None

    def set_slot(self, name: str, values: Iterable[str]) -> None:
        """Replace (or add) the slot ``name`` with ``values``.

        A new slot goes after the existing ones, which keeps the ebRIM order
        (``Slot*`` first, then ``Name``, ``Description``, ``Classification`` ...).
        """
        new_slot = etree.Element(RIM_SLOT, name=name)
        value_list = etree.SubElement(new_slot, RIM_VALUE_LIST)
        for value in values:
            etree.SubElement(value_list, RIM_VALUE).text = value

        slots = list(self.element.iterchildren(RIM_SLOT))
        for slot in slots:
            if slot.get("name") == name:
                slot.getparent().replace(slot, new_slot)
                return
        if slots:
            slots[-1].addnext(new_slot)
        else:
            self.element.insert(0, new_slot)

    def all_classifications(self) -> list[_Element]:
        """Nested Classifications plus top-level ones that classify this object."""
        return list(self.element.iterchildren(RIM_CLASSIFICATION)) + self.outer_classifications

    def classification_elements(self, scheme: str) -> list[_Element]:
        return [c for c in self.all_classifications() if c.get("classificationScheme") == scheme]

    def classifications(self, scheme: str) -> list[Code]:
        """The coded values classified under ``scheme`` (a classificationScheme UUID)."""
        return [code_of(c) for c in self.classification_elements(scheme)]

    def has_node(self, node: str) -> bool:
        """True when a Classification with ``classificationNode=node`` labels this object."""
        return any(c.get("classificationNode") == node for c in self.all_classifications())

    def external_identifier(self, scheme: str) -> str | None:
        """The ``value`` of the ExternalIdentifier with ``identificationScheme=scheme``."""
        for identifier in self.element.iterchildren(RIM_EXTERNAL_IDENTIFIER):
            if identifier.get("identificationScheme") == scheme:
                return identifier.get("value")
        return None


class DocumentEntry(RegistryObjectView):
    """XDSDocumentEntry: a ``rim:ExtrinsicObject`` (ITI TF-3 4.2.3.2)."""

    @property
    def unique_id(self) -> str | None:
        return self.external_identifier(ebrim.DE_UNIQUE_ID)

    @property
    def patient_id(self) -> str | None:
        return self.external_identifier(ebrim.DE_PATIENT_ID)

    @property
    def mime_type(self) -> str | None:
        return self.element.get("mimeType")

    @property
    def object_type(self) -> str | None:
        return self.element.get("objectType")

    @property
    def hash(self) -> str | None:
        return self.first_slot_value("hash")

    @property
    def size(self) -> str | None:
        return self.first_slot_value("size")

    @property
    def repository_unique_id(self) -> str | None:
        return self.first_slot_value("repositoryUniqueId")

    @property
    def source_patient_id(self) -> str | None:
        return self.first_slot_value("sourcePatientId")

    @property
    def creation_time(self) -> str | None:
        return self.first_slot_value("creationTime")

    @property
    def service_start_time(self) -> str | None:
        return self.first_slot_value("serviceStartTime")

    @property
    def service_stop_time(self) -> str | None:
        return self.first_slot_value("serviceStopTime")


class SubmissionSet(RegistryObjectView):
    """XDSSubmissionSet: a ``rim:RegistryPackage`` labelled with the SubmissionSet node."""

    @property
    def unique_id(self) -> str | None:
        return self.external_identifier(ebrim.SS_UNIQUE_ID)

    @property
    def patient_id(self) -> str | None:
        return self.external_identifier(ebrim.SS_PATIENT_ID)

    @property
    def source_id(self) -> str | None:
        return self.external_identifier(ebrim.SS_SOURCE_ID)

    @property
    def submission_time(self) -> str | None:
        return self.first_slot_value("submissionTime")

    @property
    def content_type_code(self) -> Code | None:
        codes = self.classifications(ebrim.SS_CONTENT_TYPE_CODE)
        return codes[0] if codes else None


class Folder(RegistryObjectView):
    """XDSFolder: a ``rim:RegistryPackage`` labelled with the Folder node."""

    @property
    def unique_id(self) -> str | None:
        return self.external_identifier(ebrim.FOLDER_UNIQUE_ID)

    @property
    def patient_id(self) -> str | None:
        return self.external_identifier(ebrim.FOLDER_PATIENT_ID)


class Association(RegistryObjectView):
    """A ``rim:Association`` (HasMember, RPLC, XFRM, APND ...)."""

    @property
    def association_type(self) -> str | None:
        return self.element.get("associationType")

    @property
    def source(self) -> str | None:
        return self.element.get("sourceObject")

    @property
    def target(self) -> str | None:
        return self.element.get("targetObject")


class Submission:
    """The objects of one SubmitObjectsRequest, grouped by XDS meaning.

    Attributes
    ----------
    request : the ``lcm:SubmitObjectsRequest`` element
    submission_sets, document_entries, folders, associations : the views, in document order
    classifications : top-level ``rim:Classification`` elements
    unlabelled_packages : RegistryPackages that are neither SubmissionSet nor Folder
    object_refs : ids of ``rim:ObjectRef`` entries (references to existing objects)
    objects_by_id : every top-level object view (and top-level Classification) by ``@id``
    """

    def __init__(self, request: _Element) -> None:
        self.request = request
        self.submission_sets: list[SubmissionSet] = []
        self.document_entries: list[DocumentEntry] = []
        self.folders: list[Folder] = []
        self.associations: list[Association] = []
        self.classifications: list[_Element] = []
        self.unlabelled_packages: list[RegistryObjectView] = []
        self.object_refs: list[str] = []
        self.objects_by_id: dict[str, RegistryObjectView | _Element] = {}
        self.duplicate_ids: list[str] = []

    @property
    def submission_set(self) -> SubmissionSet | None:
        """The SubmissionSet when there is exactly one, else None."""
        return self.submission_sets[0] if len(self.submission_sets) == 1 else None

    @classmethod
    def parse(cls, submit_objects_request: _Element) -> Submission:
        """Build the view of ``submit_objects_request``.

        A ``xds:ProvideAndRegisterDocumentSetRequest`` is accepted too: its
        SubmitObjectsRequest child is used.

        Raises
        ------
        ValueError
            No ``lcm:SubmitObjectsRequest`` / ``rim:RegistryObjectList`` in the element.
        """
        request = submit_objects_request
        if request.tag != LCM_SUBMIT_OBJECTS_REQUEST:
            request = submit_objects_request.find(LCM_SUBMIT_OBJECTS_REQUEST)
            if request is None:
                raise ValueError(f"no lcm:SubmitObjectsRequest in {submit_objects_request.tag}")
        object_list = request.find(RIM_REGISTRY_OBJECT_LIST)
        if object_list is None:
            raise ValueError("lcm:SubmitObjectsRequest without rim:RegistryObjectList")

        submission = cls(request)
        packages: list[RegistryObjectView] = []
        for element in object_list.iterchildren(tag=etree.Element):
            if element.tag == RIM_EXTRINSIC_OBJECT:
                entry = DocumentEntry(element)
                submission.document_entries.append(entry)
                submission._add(entry)
            elif element.tag == RIM_REGISTRY_PACKAGE:
                view = RegistryObjectView(element)
                packages.append(view)
                submission._add(view)
            elif element.tag == RIM_ASSOCIATION:
                association = Association(element)
                submission.associations.append(association)
                submission._add(association)
            elif element.tag == RIM_CLASSIFICATION:
                submission.classifications.append(element)
                submission._add(element)
            elif element.tag == RIM_OBJECT_REF:
                submission.object_refs.append(element.get("id", ""))

        # Top-level Classifications label or code the object they name.
        for classification in submission.classifications:
            target = submission.objects_by_id.get(classification.get("classifiedObject", ""))
            if isinstance(target, RegistryObjectView):
                target.outer_classifications.append(classification)

        submission._sort_packages(packages)
        return submission

    def _add(self, view: RegistryObjectView | _Element) -> None:
        element = view.element if isinstance(view, RegistryObjectView) else view
        object_id = element.get("id", "")
        if object_id in self.objects_by_id:
            self.duplicate_ids.append(object_id)
        self.objects_by_id[object_id] = view

    def _sort_packages(self, packages: list[RegistryObjectView]) -> None:
        """Turn each RegistryPackage view into a SubmissionSet or a Folder by its label."""
        for package in packages:
            if package.has_node(ebrim.SUBMISSION_SET_NODE):
                typed: RegistryObjectView = SubmissionSet(package.element)
                self.submission_sets.append(typed)  # type: ignore[arg-type]
            elif package.has_node(ebrim.FOLDER_NODE):
                typed = Folder(package.element)
                self.folders.append(typed)  # type: ignore[arg-type]
            else:
                self.unlabelled_packages.append(package)
                continue
            typed.outer_classifications = package.outer_classifications
            self.objects_by_id[package.entry_uuid] = typed
