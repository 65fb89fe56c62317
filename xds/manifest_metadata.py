"""XDS-I.b metadata of a KOS manifest: the RAD-68 ProvideAndRegisterDocumentSetRequest.

The DocumentEntry follows RAD TF-3 4.68.4.1.2.3 (uniqueId = the KOS SOP Instance UID, mimeType
application/dicom, formatCode = the KOS SOP Class, eventCodeList = modalities and anatomic
regions, referenceIdList = accession and Study Instance UID); the affinity-domain values come
from the profile (``xds.profile``). Elements are written in the order rim.xsd requires:
Slot*, Name?, Description?, Classification*, ExternalIdentifier*.

Times (DTM, ITI TF-3 4.2.3.1.7) are UTC. DICOM dates and times are local to the site unless the
dataset carries *Timezone Offset From UTC* (0008,0201): that offset is used when present, else
the profile's ``dicom_time_zone``. So serviceStartTime is the Study Date and Time moved to UTC,
as RAD TF-3 suggests, and the conversion is right whenever the site's zone is known.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

from lxml import etree
from pydicom import Dataset
from pydicom.valuerep import PersonName

from xds import ebrim
from xds.profile import AffinityDomainProfile, Code, cx

log = logging.getLogger(__name__)

__all__ = ["StudyFacts", "build_provide_and_register", "hl7_escape", "source_patient_name"]

# CID 29 Acquisition Modality (PS3.16), plus OT from CID 33 which images in the wild carry.
ACQUISITION_MODALITIES = {
    "AR": "Autorefraction",
    "BDUS": "Ultrasound Bone Densitometry",
    "BMD": "Bone Mineral Densitometry",
    "CR": "Computed Radiography",
    "CT": "Computed Tomography",
    "DMS": "Dermoscopy",
    "DX": "Digital Radiography",
    "ECG": "Electrocardiography",
    "EPS": "Cardiac Electrophysiology",
    "ES": "Endoscopy",
    "GM": "General Microscopy",
    "HD": "Hemodynamic Waveform",
    "IO": "Intra-oral Radiography",
    "IVOCT": "Intravascular Optical Coherence Tomography",
    "IVUS": "Intravascular Ultrasound",
    "KER": "Keratometry",
    "LEN": "Lensometry",
    "MG": "Mammography",
    "MR": "Magnetic Resonance",
    "NM": "Nuclear Medicine",
    "OAM": "Ophthalmic Axial Measurements",
    "OCT": "Optical Coherence Tomography",
    "OP": "Ophthalmic Photography",
    "OPM": "Ophthalmic Mapping",
    "OPT": "Ophthalmic Tomography",
    "OPV": "Ophthalmic Visual Field",
    "OSS": "Optical Surface Scanner",
    "PA": "Photoacoustic",
    "PT": "Positron emission tomography",
    "PX": "Panoramic X-Ray",
    "RF": "Radiofluoroscopy",
    "RG": "Radiographic imaging",
    "SM": "Slide Microscopy",
    "SRF": "Subjective Refraction",
    "US": "Ultrasound",
    "VA": "Visual Acuity",
    "XA": "X-Ray Angiography",
    "XC": "External-camera Photography",
    "OT": "Other",
}

# Coding scheme designators (PS3.16 Table 8-1) sent as OIDs in codingScheme.
SCHEME_OIDS = {
    "DCM": ebrim.DCM_CODING_SCHEME_OID,
    "LN": "2.16.840.1.113883.6.1",
    "SCT": "2.16.840.1.113883.6.96",
    "SRT": "2.16.840.1.113883.6.96",
    "RADLEX": "2.16.840.1.113883.6.256",
}

_SUBMISSION_SET_ID = "SubmissionSet01"


@dataclass
class StudyFacts:
    """What the archive index knows of the study, beyond the KOS header."""

    study_instance_uid: str
    accession_number: str = ""
    accession_issuer_oid: str | None = None
    modalities: list[str] = field(default_factory=list)
    body_parts: list[str] = field(default_factory=list)
    procedure_codes: list[tuple[str, str, str]] = field(default_factory=list)
    patient_id: str = ""
    issuer_of_patient_id: str | None = None

    @classmethod
    def from_headers(cls, headers: Iterable[Dataset]) -> StudyFacts:
        """The facts of one study read from its instances' headers (tests, ``xdsi import``)."""
        facts: StudyFacts | None = None
        for header in headers:
            if facts is None:
                issuer_seq = header.get("IssuerOfAccessionNumberSequence") or [None]
                facts = cls(
                    study_instance_uid=str(header.StudyInstanceUID),
                    accession_number=str(header.get("AccessionNumber") or ""),
                    accession_issuer_oid=_iso_entity(issuer_seq[0]),
                    procedure_codes=_codes(header.get("ProcedureCodeSequence") or []),
                    patient_id=str(header.get("PatientID") or ""),
                    issuer_of_patient_id=str(header.get("IssuerOfPatientID") or "") or None,
                )
            modality = str(header.get("Modality") or "")
            if modality and modality not in facts.modalities:
                facts.modalities.append(modality)
            body_part = str(header.get("BodyPartExamined") or "")
            if body_part and body_part not in facts.body_parts:
                facts.body_parts.append(body_part)
        if facts is None:
            raise ValueError("a study needs at least one instance header")
        return facts


def build_provide_and_register(
    kos: Dataset,
    *,
    profile: AffinityDomainProfile,
    study_facts: StudyFacts,
    document_id: str = "Document01",
    replaces_entry_uuid: str | None = None,
    source_unique_id: str | None = None,
    home_community_id: str | None = None,
    now: datetime | None = None,
) -> etree._Element:
    """The RAD-68 (ITI-41) request that submits one KOS manifest.

    Parameters
    ----------
    kos : pydicom.Dataset
        The manifest (``dicom.kos.build_manifest``).
    profile : AffinityDomainProfile
        Codes, OIDs and the patient-ID mapping of the affinity domain.
    study_facts : StudyFacts
        Modalities, body parts, procedure codes and issuers of the archived study.
    document_id : str
        The ExtrinsicObject ``id`` (symbolic or ``urn:uuid:``), also ``xds:Document/@id``.
    replaces_entry_uuid : str, optional
        entryUUID of the DocumentEntry this manifest replaces: adds an RPLC association.
    source_unique_id : str, optional
        repositoryUniqueId of the Imaging Document Source; not part of the metadata (the
        repository adds its own), accepted so callers can pass their context unchanged.
    home_community_id : str, optional
        ``urn:oid:`` home community, set as ``home`` on the DocumentEntry and SubmissionSet.
    now : datetime, optional
        submissionTime; default the current time.

    Returns
    -------
    lxml.etree._Element
        ``xds:ProvideAndRegisterDocumentSetRequest`` whose ``xds:Document`` is left empty for
        the caller to fill (base64 text or an ``xop:Include``).

    Raises
    ------
    xds.profile.PatientIdMappingError
        If the profile cannot map the local Patient ID to the affinity domain.

    References
    ----------
    IHE RAD TF-3 4.68.4.1.2.3; ITI TF-2 3.41; ITI TF-3 4.2.3.2, 4.2.3.3, 4.2.2.1.
    """
    del source_unique_id  # the repository, not the source, sets repositoryUniqueId
    now = now or datetime.now(UTC)
    local_id = study_facts.patient_id or str(kos.get("PatientID") or "")
    patient_id = profile.affinity_patient_id(local_id)
    source_patient_id = cx(
        hl7_escape(local_id), profile.local_authority(study_facts.issuer_of_patient_id)
    )

    root = etree.Element(ebrim.q("xds", "ProvideAndRegisterDocumentSetRequest"),
                         nsmap={"xds": ebrim.XDS, "lcm": ebrim.LCM, "rim": ebrim.RIM})
    request = etree.SubElement(root, ebrim.q("lcm", "SubmitObjectsRequest"))
    objects = etree.SubElement(request, ebrim.q("rim", "RegistryObjectList"))

    _document_entry(objects, kos, profile, study_facts, document_id, patient_id,
                    source_patient_id, home_community_id)
    _submission_set(objects, profile, patient_id, now, home_community_id)

    # The SubmissionSet label, then its membership and, for a replacement, RPLC.
    label = _element(objects, "Classification", classifiedObject=_SUBMISSION_SET_ID,
                     classificationNode=ebrim.SUBMISSION_SET_NODE)
    label.set("id", _new_id())
    member = _association(objects, ebrim.HAS_MEMBER, _SUBMISSION_SET_ID, document_id)
    _slot(member, "SubmissionSetStatus", ["Original"])
    if replaces_entry_uuid:
        _association(objects, ebrim.RPLC, document_id, replaces_entry_uuid)

    document = etree.SubElement(root, ebrim.q("xds", "Document"))
    document.set("id", document_id)
    return root


# DocumentEntry and SubmissionSet ------------------------------------------------------------


def _document_entry(
    parent: etree._Element,
    kos: Dataset,
    profile: AffinityDomainProfile,
    facts: StudyFacts,
    entry_id: str,
    patient_id: str,
    source_patient_id: str,
    home: str | None,
) -> None:
    entry = _element(parent, "ExtrinsicObject", id=entry_id, mimeType=ebrim.MIME_DICOM,
                     objectType=ebrim.DOCUMENT_ENTRY_STABLE)
    if home:
        entry.set("home", home)
    zone = _dicom_zone(kos, profile)

    # Slots (ITI TF-3 Table 4.3.1-3).
    _slot(entry, "creationTime", [_dtm(kos.get("ContentDate"), kos.get("ContentTime"), zone)
                                  or _utc(datetime.now(UTC))])
    _slot(entry, "languageCode", [profile.language_code])
    start = _dtm(kos.get("StudyDate"), kos.get("StudyTime"), zone)
    if start:
        _slot(entry, "serviceStartTime", [start])
    _slot(entry, "sourcePatientId", [source_patient_id])
    _slot(entry, "sourcePatientInfo", _source_patient_info(kos, source_patient_id))
    _slot(entry, ebrim.REFERENCE_ID_LIST_SLOT, _reference_ids(kos, facts, profile))
    _name(entry, profile.title or _kos_title(kos))

    # Classifications, then external identifiers.
    if profile.author:
        _author(entry, ebrim.DE_AUTHOR, entry_id, profile)
    _classification(entry, ebrim.DE_CLASS_CODE, entry_id, profile.class_code)
    for code in profile.confidentiality_codes:
        _classification(entry, ebrim.DE_CONFIDENTIALITY_CODE, entry_id, code)
    for code in _event_codes(facts, profile):
        _classification(entry, ebrim.DE_EVENT_CODE, entry_id, code)
    _classification(entry, ebrim.DE_FORMAT_CODE, entry_id, profile.format_code)
    _classification(entry, ebrim.DE_HEALTHCARE_FACILITY_TYPE_CODE, entry_id,
                    profile.healthcare_facility_type_code)
    _classification(entry, ebrim.DE_PRACTICE_SETTING_CODE, entry_id,
                    profile.practice_setting_code)
    _classification(entry, ebrim.DE_TYPE_CODE, entry_id, _type_code(kos, facts, profile))
    _external_identifier(entry, ebrim.DE_PATIENT_ID, entry_id, patient_id)
    _external_identifier(entry, ebrim.DE_UNIQUE_ID, entry_id, str(kos.SOPInstanceUID))


def _submission_set(
    parent: etree._Element,
    profile: AffinityDomainProfile,
    patient_id: str,
    now: datetime,
    home: str | None,
) -> None:
    package = _element(parent, "RegistryPackage", id=_SUBMISSION_SET_ID,
                       objectType=ebrim.OBJECT_TYPE_REGISTRY_PACKAGE)
    if home:
        package.set("home", home)
    _slot(package, "submissionTime", [_utc(now)])
    if profile.author:
        _author(package, ebrim.SS_AUTHOR, _SUBMISSION_SET_ID, profile)
    _classification(package, ebrim.SS_CONTENT_TYPE_CODE, _SUBMISSION_SET_ID,
                    profile.content_type_code)
    _external_identifier(package, ebrim.SS_PATIENT_ID, _SUBMISSION_SET_ID, patient_id)
    _external_identifier(package, ebrim.SS_SOURCE_ID, _SUBMISSION_SET_ID, profile.source_id)
    _external_identifier(package, ebrim.SS_UNIQUE_ID, _SUBMISSION_SET_ID,
                         f"2.25.{uuid.uuid4().int}")


# Values derived from the study ------------------------------------------------------------


def hl7_escape(text: str) -> str:
    """Escape the HL7 v2 delimiters in one component (ITI TF-3 4.2.3.1.7, HL7 2.5 2.7.1)."""
    out = text.replace("\\", "\\E\\")
    for char, escape in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        out = out.replace(char, escape)
    return out


def source_patient_name(name: PersonName | str | None) -> str:
    """A DICOM Patient's Name as an HL7 XPN: components reordered (DICOM puts the prefix
    before the suffix, HL7 the suffix first) and escaped; the alphabetic, ideographic and
    phonetic groups, when present, become repetitions."""
    if not name:
        return ""
    groups = str(name).split("=")
    repetitions = []
    for group in groups:
        parts = (group.split("^") + [""] * 5)[:5]
        family, given, middle, prefix, suffix = (hl7_escape(p) for p in parts)
        xpn = f"{family}^{given}^{middle}^{suffix}^{prefix}".rstrip("^")
        if xpn:
            repetitions.append(xpn)
    return "~".join(repetitions)


def _source_patient_info(kos: Dataset, source_patient_id: str) -> list[str]:
    values = [f"PID-3|{source_patient_id}"]
    name = source_patient_name(kos.get("PatientName"))
    if name:
        values.append(f"PID-5|{name}")
    birth_date = str(kos.get("PatientBirthDate") or "")
    if birth_date:
        values.append(f"PID-7|{hl7_escape(birth_date)}")
    sex = str(kos.get("PatientSex") or "")
    if sex:
        values.append(f"PID-8|{hl7_escape(sex)}")
    return values


def _reference_ids(kos: Dataset, facts: StudyFacts, profile: AffinityDomainProfile) -> list[str]:
    values = []
    accession = facts.accession_number or str(kos.get("AccessionNumber") or "")
    if accession:
        issuer_items = kos.get("IssuerOfAccessionNumberSequence") or [None]
        authority = (facts.accession_issuer_oid or _iso_entity(issuer_items[0])
                     or profile.accession_authority)
        assigning = f"&{authority}&ISO" if authority else ""
        values.append(f"{hl7_escape(accession)}^^^{assigning}^{ebrim.REF_ACCESSION}")
    study_uid = facts.study_instance_uid or str(kos.StudyInstanceUID)
    values.append(f"{study_uid}^^^^{ebrim.REF_STUDY_INSTANCE_UID}")
    return values


def _event_codes(facts: StudyFacts, profile: AffinityDomainProfile) -> list[Code]:
    # Acquisition modalities only: KO, PR, SR, SEG and the like describe derived objects.
    codes: list[Code] = []
    for modality in facts.modalities:
        meaning = ACQUISITION_MODALITIES.get(modality)
        code = Code(modality, ebrim.DCM_CODING_SCHEME_OID, meaning) if meaning else None
        if code is not None and code not in codes:
            codes.append(code)
    for body_part in facts.body_parts:
        code = profile.anatomic_region(body_part)
        if code is None:
            log.debug("no anatomic region code for body part %r in profile %s",
                      body_part, profile.name)
        elif code not in codes:
            codes.append(code)
    return codes


def _type_code(kos: Dataset, facts: StudyFacts, profile: AffinityDomainProfile) -> Code:
    # RAD TF-3 4.68.4.1.2.3.2: typeCode from the requested procedure; the profile's default
    # when the study carries no complete procedure code.
    procedure_codes = facts.procedure_codes or _codes(kos.get("ProcedureCodeSequence") or [])
    for value, designator, meaning in procedure_codes:
        if value and designator and meaning:
            return Code(value, SCHEME_OIDS.get(designator, designator), meaning)
    return profile.type_code


def _kos_title(kos: Dataset) -> str:
    titles = kos.get("ConceptNameCodeSequence") or []
    return str(titles[0].get("CodeMeaning") or "Manifest") if titles else "Manifest"


def _codes(items: Iterable[Dataset]) -> list[tuple[str, str, str]]:
    return [
        (str(item.get("CodeValue") or ""), str(item.get("CodingSchemeDesignator") or ""),
         str(item.get("CodeMeaning") or ""))
        for item in items
        if item.get("CodeValue")
    ]


def _iso_entity(item: Dataset | None) -> str | None:
    if item is None or item.get("UniversalEntityIDType") != "ISO":
        return None
    return str(item.get("UniversalEntityID") or "") or None


# Times ------------------------------------------------------------------------------------


def _dicom_zone(kos: Dataset, profile: AffinityDomainProfile) -> tzinfo | None:
    offset = str(kos.get("TimezoneOffsetFromUTC") or "").strip()
    if len(offset) == 5 and offset[0] in "+-" and offset[1:].isdigit():
        minutes = int(offset[1:3]) * 60 + int(offset[3:5])
        return timezone((-1 if offset[0] == "-" else 1) * timedelta(minutes=minutes))
    if profile.dicom_time_zone == "local":
        return None  # datetime.astimezone treats a naive value as local time
    return ZoneInfo(profile.dicom_time_zone)


def _dtm(date: object, time: object, zone: tzinfo | None) -> str | None:
    """A DICOM DA + TM as a UTC DTM; only the date when the time is absent."""
    date_text = str(date or "").strip()
    if len(date_text) != 8 or not date_text.isdigit():
        return None
    digits = str(time or "").replace(":", "").split(".")[0].strip()
    if not digits.isdigit() or len(digits) not in (2, 4, 6):
        return date_text
    digits = digits.ljust(6, "0")
    moment = datetime.strptime(date_text + digits, "%Y%m%d%H%M%S")
    moment = moment.replace(tzinfo=zone) if zone is not None else moment
    return _utc(moment.astimezone(UTC))


def _utc(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S")


# ebRIM elements ---------------------------------------------------------------------------


def _new_id() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _element(parent: etree._Element, local: str, **attributes: str) -> etree._Element:
    return etree.SubElement(parent, ebrim.q("rim", local), attributes)


def _slot(parent: etree._Element, name: str, values: list[str]) -> None:
    slot = _element(parent, "Slot", name=name)
    value_list = _element(slot, "ValueList")
    for value in values:
        _element(value_list, "Value").text = value


def _name(parent: etree._Element, text: str) -> None:
    name = _element(parent, "Name")
    _element(name, "LocalizedString", value=text)


def _classification(parent: etree._Element, scheme: str, owner: str, code: Code) -> None:
    classification = _element(
        parent, "Classification", classificationScheme=scheme, classifiedObject=owner,
        id=_new_id(), nodeRepresentation=code.code, objectType=ebrim.OBJECT_TYPE_CLASSIFICATION,
    )
    _slot(classification, "codingScheme", [code.scheme])
    _name(classification, code.display)


def _author(parent: etree._Element, scheme: str, owner: str,
            profile: AffinityDomainProfile) -> None:
    author = profile.author
    assert author is not None
    classification = _element(
        parent, "Classification", classificationScheme=scheme, classifiedObject=owner,
        id=_new_id(), nodeRepresentation="", objectType=ebrim.OBJECT_TYPE_CLASSIFICATION,
    )
    if author.person:
        _slot(classification, "authorPerson", [author.person])
    if author.institution:
        _slot(classification, "authorInstitution", list(author.institution))
    if author.role:
        _slot(classification, "authorRole", list(author.role))
    if author.specialty:
        _slot(classification, "authorSpecialty", list(author.specialty))


def _external_identifier(parent: etree._Element, scheme: str, owner: str, value: str) -> None:
    identifier = _element(
        parent, "ExternalIdentifier", id=_new_id(), identificationScheme=scheme,
        objectType=ebrim.OBJECT_TYPE_EXTERNAL_IDENTIFIER, registryObject=owner, value=value,
    )
    _name(identifier, ebrim.EXTERNAL_IDENTIFIER_NAMES[scheme])


def _association(parent: etree._Element, kind: str, source: str,
                 target: str) -> etree._Element:
    return _element(parent, "Association", id=_new_id(), associationType=kind,
                    objectType=ebrim.OBJECT_TYPE_ASSOCIATION, sourceObject=source,
                    targetObject=target)
