"""The Key Object Selection Document used as the XDS-I.b manifest of one study.

One manifest per study: a KOS (PS3.3 A.35.4) with the document title (113030, DCM, "Manifest"),
the TID 2010 content tree with one CONTAINS item per referenced instance, and the *Current
Requested Procedure Evidence Sequence* listing every instance by series, each series carrying
*Retrieve AE Title*, *Retrieve Location UID* and *Retrieve URL* (RAD TF-3 4.68.4.1.2.1).

The module knows nothing of XDS: the caller passes the retrieve attributes as plain values.

The content tree and the evidence grow with the study (thousands of items), so they are built
from bare ``DataElement`` objects placed straight into each item, which is several times faster
than keyword assignment and gives the same dataset.
"""

from __future__ import annotations

import copy
import functools
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import BinaryIO

from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    KeyObjectSelectionDocumentStorage,
)

__all__ = [
    "Reference",
    "build_manifest",
    "manifest_summary",
    "new_uid",
    "value_type_for",
    "write_manifest",
]

# Document title, CID 7010, and the root template (PS3.16 TID 2010).
MANIFEST_TITLE = ("113030", "DCM", "Manifest")
TEMPLATE_KEY_OBJECT_SELECTION = "2010"

# Series Number of the manifest series: the value dcm4chee and the NIST references use, far from
# the numbers modalities give their image series.
MANIFEST_SERIES_NUMBER = 999

# Tags used when building items element by element.
_RELATIONSHIP_TYPE = Tag("RelationshipType")
_VALUE_TYPE = Tag("ValueType")
_REFERENCED_SOP_SEQUENCE = Tag("ReferencedSOPSequence")
_REFERENCED_SOP_CLASS_UID = Tag("ReferencedSOPClassUID")
_REFERENCED_SOP_INSTANCE_UID = Tag("ReferencedSOPInstanceUID")

# Patient, Clinical Trial Subject, General Study and Patient Study attributes copied from the
# archived study (PS3.3 C.7.1.1, C.7.1.3, C.7.2.1, C.7.2.2). Type 2 ones are created empty when
# the images lack them.
_COPIED_KEYWORDS = (
    "SpecificCharacterSet",
    "TimezoneOffsetFromUTC",
    # Patient
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "PatientSpeciesDescription",
    "PatientSpeciesCodeSequence",
    "PatientBreedDescription",
    "PatientBreedCodeSequence",
    "BreedRegistrationSequence",
    "ResponsiblePerson",
    "ResponsiblePersonRole",
    "ResponsibleOrganization",
    "PatientComments",
    # Clinical Trial Subject
    "ClinicalTrialSponsorName",
    "ClinicalTrialProtocolID",
    "ClinicalTrialProtocolName",
    "ClinicalTrialSiteID",
    "ClinicalTrialSiteName",
    "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID",
    # General Study
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "ProcedureCodeSequence",
    # Patient Study
    "AdmittingDiagnosesDescription",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
)
_TYPE_2_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)

_CLINICAL_TRIAL_SUBJECT = [k for k in _COPIED_KEYWORDS if k.startswith("ClinicalTrial")]
_CLINICAL_TRIAL_SUBJECT_TYPE_2 = (
    "ClinicalTrialProtocolName",
    "ClinicalTrialSiteID",
    "ClinicalTrialSiteName",
)

# SOP classes with pixel data whose names do not say "Image Storage".
_IMAGE_CLASSES_BY_NAME = {
    "Segmentation Storage",
    "Label Map Segmentation Storage",
    "Heightmap Segmentation Storage",
    "Parametric Map Storage",
    "Corneal Topography Map Storage",
}


@dataclass(frozen=True)
class Reference:
    """One archived instance the manifest references.

    ``modality`` and ``number_of_frames`` are hints: the Value Type of the content item comes
    from the SOP class; for a SOP class unknown to the dictionary, a frame count marks an image.
    """

    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    modality: str | None = None
    number_of_frames: int | None = None


def new_uid() -> UID:
    """A UID under the 2.25 root derived from a random UUID (PS3.5 B.2)."""
    return UID(f"2.25.{uuid.uuid4().int}")


@functools.lru_cache(maxsize=256)
def value_type_for(sop_class_uid: str, number_of_frames: int | None = None) -> str:
    """The TID 2010 Value Type for a referenced instance: IMAGE, WAVEFORM or COMPOSITE.

    References
    ----------
    DICOM PS3.16 TID 2010 rows 8–10; PS3.3 A.35.4.3 (value types allowed in a KOS).
    """
    uid = UID(sop_class_uid)
    name = uid.name if uid.is_valid and uid.type == "SOP Class" else ""
    if "Waveform Storage" in name:
        return "WAVEFORM"
    if "Image Storage" in name or name in _IMAGE_CLASSES_BY_NAME:
        return "IMAGE"
    if not name and number_of_frames:
        return "IMAGE"
    return "COMPOSITE"


def build_manifest(
    study_header: Dataset,
    references: Iterable[Reference],
    *,
    retrieve_ae_title: str,
    retrieve_location_uid: str,
    retrieve_url_base: str | None,
    institution_name: str | None = None,
    manufacturer: str = "xdsi",
    now: datetime | None = None,
) -> Dataset:
    """Build the KOS manifest of one study.

    Parameters
    ----------
    study_header : pydicom.Dataset
        The header of one archived instance of the study; the Patient and Study modules, and
        the *Specific Character Set*, are copied from it unchanged.
    references : iterable of Reference
        Every instance of the study to reference. Series keep the order of their first
        appearance; instances keep the order given within their series.
    retrieve_ae_title : str
        *Retrieve AE Title* (0008,0054): the DICOM AE that serves C-MOVE / C-GET.
    retrieve_location_uid : str
        *Retrieve Location UID* (0040,E011): the repositoryUniqueId of the Imaging Document
        Source, which consumers send back in RAD-69.
    retrieve_url_base : str or None
        The WADO-RS root of this service (``<base_url>/wado-rs``); each series gets
        *Retrieve URL* (0008,1190) ``<root>/studies/<study>/series/<series>``. None: omitted.
    institution_name : str, optional
        *Institution Name* (0008,0080) of the General Equipment module.
    manufacturer : str
        *Manufacturer* (0008,0070).
    now : datetime, optional
        Content Date/Time; default the current time. A naive value is taken as UTC. It is
        written in the study's Timezone Offset From UTC if it has one, else in local time.

    Returns
    -------
    pydicom.Dataset
        The manifest, with new Series and SOP Instance UIDs, ready for ``write_manifest``.

    Raises
    ------
    ValueError
        If there is no reference, the header has no Study Instance UID, or a reference lacks a
        UID.

    References
    ----------
    DICOM PS3.3 A.35.4, C.17.6; PS3.16 TID 2010. IHE RAD TF-3 4.68.4.1.2.1.
    """
    study_uid = study_header.get("StudyInstanceUID")
    if not study_uid:
        raise ValueError("the study header has no Study Instance UID")
    series_order = _group_by_series(references)
    if not series_order:
        raise ValueError(f"study {study_uid}: a manifest needs at least one referenced instance")

    now = _aware(now or datetime.now(UTC))
    sop_instance_uid = new_uid()

    ds = Dataset()
    _copy_patient_and_study(study_header, ds)

    # Key Object Document Series and General Equipment.
    ds.Modality = "KO"
    ds.SeriesInstanceUID = new_uid()
    ds.SeriesNumber = MANIFEST_SERIES_NUMBER
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    ds.Manufacturer = manufacturer
    if institution_name:
        ds.InstitutionName = institution_name

    # Key Object Document. Timezone Offset From UTC applies to every date and time of the
    # dataset: when the study has one (copied above), express the content time in it.
    ds.InstanceNumber = 1
    study_offset = _utc_offset(ds.get("TimezoneOffsetFromUTC"))
    # Without one, DICOM dates and times are local: write the server's local time, and add no
    # offset, which would also change the meaning of the copied Study Date and Time.
    now = now.astimezone(study_offset) if study_offset is not None else now.astimezone()
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S.%f")
    ds.CurrentRequestedProcedureEvidenceSequence = [
        _evidence_item(study_uid, series_order, retrieve_ae_title, retrieve_location_uid,
                       retrieve_url_base)
    ]

    # SR Document Content: the TID 2010 root container.
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code_item(*MANIFEST_TITLE)]
    ds.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = TEMPLATE_KEY_OBJECT_SELECTION
    ds.ContentTemplateSequence = [template]
    ds.ContentSequence = Sequence(
        _content_item(ref) for instances in series_order.values() for ref in instances
    )

    # SOP Common.
    ds.SOPClassUID = KeyObjectSelectionDocumentStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate = ds.ContentDate
    ds.InstanceCreationTime = ds.ContentTime
    return ds


def write_manifest(ds: Dataset, path_or_file: str | BinaryIO | object) -> None:
    """Write the manifest as a DICOM Part 10 file in Explicit VR Little Endian.

    ``path_or_file`` is a path or any object with ``write(bytes)`` (a blob-store spool).
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "XDSI_KOS_1"
    ds.file_meta = meta
    dcmwrite(path_or_file, ds, enforce_file_format=True, little_endian=True, implicit_vr=False)


def manifest_summary(ds: Dataset) -> dict:
    """What a manifest references, for tests and the demo.

    Returns ``{"sop_instance_uid", "study_instance_uid", "series": {series uid: [instance
    uids]}, "sop_classes": {instance uid: class uid}, "retrieve_ae_title",
    "retrieve_location_uid", "retrieve_url": {series uid: url or None}}``. The AE title and
    location UID are those of the first series (a manifest we build uses one of each).
    """
    series: dict[str, list[str]] = {}
    sop_classes: dict[str, str] = {}
    urls: dict[str, str | None] = {}
    ae_title = location_uid = None
    study_uid = None
    for study_item in ds.get("CurrentRequestedProcedureEvidenceSequence", []):
        study_uid = study_uid or str(study_item.StudyInstanceUID)
        for series_item in study_item.get("ReferencedSeriesSequence", []):
            series_uid = str(series_item.SeriesInstanceUID)
            ae_title = ae_title or series_item.get("RetrieveAETitle")
            location_uid = location_uid or series_item.get("RetrieveLocationUID")
            urls[series_uid] = series_item.get("RetrieveURL")
            instances = series.setdefault(series_uid, [])
            for sop in series_item.get("ReferencedSOPSequence", []):
                instances.append(str(sop.ReferencedSOPInstanceUID))
                sop_classes[str(sop.ReferencedSOPInstanceUID)] = str(sop.ReferencedSOPClassUID)
    return {
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "study_instance_uid": study_uid,
        "series": series,
        "sop_classes": sop_classes,
        "retrieve_ae_title": str(ae_title) if ae_title else None,
        "retrieve_location_uid": str(location_uid) if location_uid else None,
        "retrieve_url": urls,
    }


# Helpers -----------------------------------------------------------------------------------


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _utc_offset(value: object) -> timezone | None:
    """The tzinfo of a Timezone Offset From UTC value ``&ZZXX``, or None if absent or invalid."""
    text = str(value or "").strip()
    if len(text) != 5 or text[0] not in "+-" or not text[1:].isdigit():
        return None
    minutes = int(text[1:3]) * 60 + int(text[3:5])
    return timezone((-1 if text[0] == "-" else 1) * timedelta(minutes=minutes))


def _group_by_series(references: Iterable[Reference]) -> dict[str, list[Reference]]:
    grouped: dict[str, list[Reference]] = {}
    for ref in references:
        if not (ref.series_instance_uid and ref.sop_class_uid and ref.sop_instance_uid):
            raise ValueError(f"incomplete instance reference: {ref!r}")
        grouped.setdefault(ref.series_instance_uid, []).append(ref)
    return grouped


def _copy_patient_and_study(header: Dataset, ds: Dataset) -> None:
    # A PersonName keeps the bytes it was read from and writes them back unchanged when the
    # Specific Character Set is the same (it is copied too), so names stay byte for byte.
    for keyword in _COPIED_KEYWORDS:
        tag = Tag(keyword)
        if tag in header:
            ds[tag] = copy.deepcopy(header[tag])

    # Clinical Trial Subject (U): kept whole when its Type 1 attributes are there, with its
    # Type 2 ones created empty; a fragment of it would make the manifest invalid.
    present = [k for k in _CLINICAL_TRIAL_SUBJECT if k in ds]
    if present:
        subject = ds.get("ClinicalTrialSubjectID") or ds.get("ClinicalTrialSubjectReadingID")
        complete = (ds.get("ClinicalTrialSponsorName") and ds.get("ClinicalTrialProtocolID")
                    and subject)
        for keyword in present if not complete else ():
            delattr(ds, keyword)
        for keyword in _CLINICAL_TRIAL_SUBJECT_TYPE_2 if complete else ():
            if keyword not in ds:
                setattr(ds, keyword, None)

    # Images in the wild carry an empty Procedure Code Sequence item; a code item without a
    # value and meaning is invalid in the manifest, so only complete codes are kept.
    if "ProcedureCodeSequence" in ds:
        codes = [item for item in ds.ProcedureCodeSequence if _is_complete_code(item)]
        if codes:
            ds.ProcedureCodeSequence = codes
        else:
            del ds.ProcedureCodeSequence

    # The ACR-NEMA time form "hh:mm:ss" is no longer a valid TM; drop the colons, which keeps
    # the same time (PS3.5 6.2, note on retired formats).
    if ds.get("StudyTime") and ":" in str(ds.StudyTime):
        ds.StudyTime = str(ds.StudyTime).replace(":", "")
    for keyword in _TYPE_2_KEYWORDS:
        if keyword not in ds:
            setattr(ds, keyword, None)


def _is_complete_code(item: Dataset) -> bool:
    has_value = item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue")
    return bool(has_value and item.get("CodeMeaning"))


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _sop_item(ref: Reference) -> Dataset:
    item = Dataset()
    item._dict[_REFERENCED_SOP_CLASS_UID] = DataElement(
        _REFERENCED_SOP_CLASS_UID, "UI", ref.sop_class_uid, validation_mode=0
    )
    item._dict[_REFERENCED_SOP_INSTANCE_UID] = DataElement(
        _REFERENCED_SOP_INSTANCE_UID, "UI", ref.sop_instance_uid, validation_mode=0
    )
    return item


def _content_item(ref: Reference) -> Dataset:
    item = Dataset()
    item._dict[_RELATIONSHIP_TYPE] = DataElement(
        _RELATIONSHIP_TYPE, "CS", "CONTAINS", validation_mode=0
    )
    item._dict[_VALUE_TYPE] = DataElement(
        _VALUE_TYPE, "CS", value_type_for(ref.sop_class_uid, ref.number_of_frames),
        validation_mode=0,
    )
    item._dict[_REFERENCED_SOP_SEQUENCE] = DataElement(
        _REFERENCED_SOP_SEQUENCE, "SQ", [_sop_item(ref)], validation_mode=0
    )
    return item


def _evidence_item(
    study_uid: str,
    series_order: dict[str, list[Reference]],
    retrieve_ae_title: str,
    retrieve_location_uid: str,
    retrieve_url_base: str | None,
) -> Dataset:
    # Hierarchical SOP Instance Reference Macro (PS3.3 C.17.2.1), with the XDS-I retrieve
    # attributes at series level, where RAD-69 consumers and the NIST checks look for them.
    study_item = Dataset()
    study_item.StudyInstanceUID = study_uid
    series_items = []
    for series_uid, instances in series_order.items():
        series_item = Dataset()
        series_item.SeriesInstanceUID = series_uid
        series_item.RetrieveAETitle = retrieve_ae_title
        series_item.RetrieveLocationUID = retrieve_location_uid
        if retrieve_url_base:
            base = retrieve_url_base.rstrip("/")
            series_item.RetrieveURL = f"{base}/studies/{study_uid}/series/{series_uid}"
        series_item[_REFERENCED_SOP_SEQUENCE] = DataElement(
            _REFERENCED_SOP_SEQUENCE, "SQ", [_sop_item(ref) for ref in instances],
            validation_mode=0,
        )
        series_items.append(series_item)
    study_item.ReferencedSeriesSequence = series_items
    return study_item
