"""XDS-I metadata of a KOS manifest (xds/manifest_metadata.py) against the NIST IDS rules and
the official XDS.b schema."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from lxml import etree
from pydicom import Dataset

from dicom.kos import Reference, build_manifest
from tests.conftest import SCHEMAS
from tests.test_kos import (
    DEPT_STUDIES,
    JAPANESE_NAME,
    NOW,
    charset_header,
    dept_headers,
    dept_manifest,
)
from xds import ebrim
from xds.manifest_metadata import (
    StudyFacts,
    build_provide_and_register,
    hl7_escape,
    source_patient_name,
)
from xds.metadata import Submission
from xds.profile import PatientIdMappingError, load_profile
from xds.validation import validate_submission

REPOSITORY_XSD = SCHEMAS / "ihe-iti" / "schema" / "IHE" / "XDS.b_DocumentRepository.xsd"
XML_XSD = SCHEMAS / "w3c-oasis" / "xml.xsd"
NIST_AFFINITY_AUTHORITY = "1.3.6.1.4.1.21367.2005.13.20.1000"
NIST_LOCAL_AUTHORITY = "1.3.6.1.4.1.21367.1800.13.20.1000"
NIST_ACCESSION_AUTHORITY = "1.3.6.1.4.1.21367.13.202.2000"
NS = ebrim.NSMAP


class _LocalXmlXsd(etree.Resolver):
    """rim.xsd imports xml.xsd by its W3C URL: serve the local copy, never the network."""

    def resolve(self, url, public_id, context):  # type: ignore[no-untyped-def]
        if url and url.endswith("xml.xsd"):
            return self.resolve_filename(str(XML_XSD), context)
        return None


@lru_cache(maxsize=1)
def repository_schema() -> etree.XMLSchema:
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    parser.resolvers.add(_LocalXmlXsd())
    return etree.XMLSchema(etree.parse(str(REPOSITORY_XSD), parser))


def dept_request(number: str, **kwargs: object) -> tuple[Dataset, etree._Element]:
    kos = dept_manifest(number)
    request = build_provide_and_register(
        kos, profile=load_profile("nist-ids"),
        study_facts=StudyFacts.from_headers(dept_headers(number)), **kwargs,
    )
    return kos, request


def entry_of(request: etree._Element) -> etree._Element:
    return request.find("lcm:SubmitObjectsRequest/rim:RegistryObjectList/rim:ExtrinsicObject", NS)


def slot(owner: etree._Element, name: str) -> list[str]:
    return owner.xpath("rim:Slot[@name=$n]/rim:ValueList/rim:Value/text()", namespaces=NS, n=name)


def codes(owner: etree._Element, scheme: str) -> list[tuple[str, str, str]]:
    return [
        (c.get("nodeRepresentation"), slot(c, "codingScheme")[0],
         c.find("rim:Name/rim:LocalizedString", NS).get("value"))
        for c in owner.xpath("rim:Classification[@classificationScheme=$s]", namespaces=NS,
                             s=scheme)
    ]


def identifier(owner: etree._Element, scheme: str) -> str:
    (value,) = owner.xpath("rim:ExternalIdentifier[@identificationScheme=$s]/@value",
                           namespaces=NS, s=scheme)
    return value


# The NIST DEPT studies ----------------------------------------------------------------------


@pytest.mark.parametrize("number", DEPT_STUDIES)
def test_rad68_metadata_for_nist_study_validates_against_official_schema(number: str) -> None:
    old_entry = "urn:uuid:0b5e8d4e-8f3e-4a59-9a57-4c8f8e0a1b2c"
    _, request = dept_request(number, replaces_entry_uuid=old_entry)
    document = etree.fromstring(etree.tostring(request))

    assert repository_schema().validate(document), repository_schema().error_log
    assert validate_submission(Submission.parse(request), role="repository") == []


@pytest.mark.parametrize("number", DEPT_STUDIES)
def test_rad68_metadata_for_nist_study_follows_nist_rules(number: str) -> None:
    kos, request = dept_request(number)
    headers = dept_headers(number)
    entry = entry_of(request)
    package = request.find(".//rim:RegistryPackage", NS)
    expected_patient = f"IDS-AD{number}-a^^^&{NIST_AFFINITY_AUTHORITY}&ISO"

    # Enforced by the NIST test (README §5.2, §5.4).
    assert identifier(entry, ebrim.DE_PATIENT_ID) == expected_patient
    assert identifier(package, ebrim.SS_PATIENT_ID) == expected_patient
    assert entry.get("mimeType") == "application/dicom"
    assert entry.get("objectType") == ebrim.DOCUMENT_ENTRY_STABLE
    assert codes(entry, ebrim.DE_FORMAT_CODE) == [
        ("1.2.840.10008.5.1.4.1.1.88.59", "1.2.840.10008.2.6.1", "Key Object Selection Document")]
    assert identifier(entry, ebrim.DE_UNIQUE_ID) == kos.SOPInstanceUID

    # Documented rules.
    source_id = f"IDS-DEPT{number}-a^^^&{NIST_LOCAL_AUTHORITY}&ISO"
    assert slot(entry, "sourcePatientId") == [source_id]
    assert slot(entry, ebrim.REFERENCE_ID_LIST_SLOT) == [
        f"{headers[0].AccessionNumber}^^^&{NIST_ACCESSION_AUTHORITY}&ISO^{ebrim.REF_ACCESSION}",
        f"{headers[0].StudyInstanceUID}^^^^{ebrim.REF_STUDY_INSTANCE_UID}",
    ]
    modalities = {str(h.Modality) for h in headers}
    events = codes(entry, ebrim.DE_EVENT_CODE)
    dcm_codes = {code for code, scheme, _ in events if scheme == ebrim.DCM_CODING_SCHEME_OID}
    assert dcm_codes == modalities
    assert codes(entry, ebrim.DE_CLASS_CODE) == [("IMAGES", "1.3.6.1.4.1.19376.1.2.6.1", "Images")]
    assert codes(entry, ebrim.DE_CONFIDENTIALITY_CODE) == [("R", "2.16.840.1.113883.5.25",
                                                            "restricted")]
    assert codes(entry, ebrim.DE_HEALTHCARE_FACILITY_TYPE_CODE)[0][0] == "35971002"
    assert codes(entry, ebrim.DE_PRACTICE_SETTING_CODE)[0][0] == "Practice-A"
    assert codes(entry, ebrim.DE_TYPE_CODE)[0][0] == "18748-4"  # no usable procedure code

    # The profile's dicom_time_zone is UTC: Study Date + Time unchanged, to the second (041
    # and 042 carry their own offset: see the offset test below).
    if "TimezoneOffsetFromUTC" not in headers[0]:
        study_time = str(headers[0].StudyTime).replace(":", "")[:6]
        assert slot(entry, "serviceStartTime") == [f"{headers[0].StudyDate}{study_time}"]
    assert slot(entry, "sourcePatientInfo")[:4] == [
        f"PID-3|{source_id}", f"PID-5|{headers[0].PatientName}",
        f"PID-7|{headers[0].PatientBirthDate}", f"PID-8|{headers[0].PatientSex}"]


def test_rad68_metadata_event_codes_hold_modality_meaning_and_anatomic_region() -> None:
    _, request = dept_request("003")  # CT, Body Part Examined HEADNECK

    assert codes(entry_of(request), ebrim.DE_EVENT_CODE) == [
        ("CT", ebrim.DCM_CODING_SCHEME_OID, "Computed Tomography"),
        ("774007", "2.16.840.1.113883.6.96", "Head and Neck"),
    ]


def test_rad68_metadata_service_start_time_uses_the_study_timezone_offset() -> None:
    kos, request = dept_request("041")  # Timezone Offset From UTC -0400

    local = datetime.strptime(f"{kos.StudyDate}{str(kos.StudyTime)[:6]}", "%Y%m%d%H%M%S")
    expected = (local.replace(tzinfo=UTC).timestamp() + 4 * 3600)
    start = slot(entry_of(request), "serviceStartTime")[0]
    start_utc = datetime.strptime(start, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    assert start_utc.timestamp() == expected
    # Content Date/Time were written at NOW in -0400: creationTime is NOW in UTC.
    assert slot(entry_of(request), "creationTime") == ["20240105120000"]


def test_rad68_metadata_service_start_time_uses_profile_zone_without_offset() -> None:
    profile = dataclasses.replace(load_profile("nist-ids"), dicom_time_zone="Europe/Paris")
    kos = dept_manifest("024")
    request = build_provide_and_register(kos, profile=profile,
                                         study_facts=StudyFacts.from_headers(dept_headers("024")))

    local = datetime.strptime(f"{kos.StudyDate}{str(kos.StudyTime)[:6]}", "%Y%m%d%H%M%S")
    expected = local.replace(tzinfo=ZoneInfo("Europe/Paris")).astimezone(UTC)
    assert slot(entry_of(request), "serviceStartTime") == [expected.strftime("%Y%m%d%H%M%S")]


# Structure -----------------------------------------------------------------------------------


def test_rad68_request_has_empty_document_matching_the_entry_and_has_member() -> None:
    _, request = dept_request("022", document_id="urn:uuid:6f1c3c35-06a4-4c4c-8a4b-1bb3e9b0a1d2")
    entry = entry_of(request)
    document = request.find("xds:Document", NS)

    assert document.get("id") == entry.get("id") == "urn:uuid:6f1c3c35-06a4-4c4c-8a4b-1bb3e9b0a1d2"
    assert document.text is None and len(document) == 0
    (member,) = request.xpath(".//rim:Association[@associationType=$t]", namespaces=NS,
                              t=ebrim.HAS_MEMBER)
    assert member.get("sourceObject") == request.find(".//rim:RegistryPackage", NS).get("id")
    assert member.get("targetObject") == entry.get("id")
    assert slot(member, "SubmissionSetStatus") == ["Original"]
    assert not request.xpath(".//rim:Association[@associationType=$t]", namespaces=NS,
                             t=ebrim.RPLC)


def test_rad68_replacement_adds_rplc_from_new_entry_to_old() -> None:
    old = "urn:uuid:0b5e8d4e-8f3e-4a59-9a57-4c8f8e0a1b2c"
    _, request = dept_request("022", replaces_entry_uuid=old)

    (rplc,) = request.xpath(".//rim:Association[@associationType=$t]", namespaces=NS,
                            t=ebrim.RPLC)
    assert (rplc.get("sourceObject"), rplc.get("targetObject")) == ("Document01", old)


def test_rad68_submission_set_has_source_id_unique_id_content_type_and_home() -> None:
    home = "urn:oid:1.3.6.1.4.1.21367.13.70.200"
    _, first = dept_request("022", home_community_id=home)
    _, second = dept_request("022")
    package = first.find(".//rim:RegistryPackage", NS)

    assert identifier(package, ebrim.SS_SOURCE_ID) == load_profile("nist-ids").source_id
    unique_id = identifier(package, ebrim.SS_UNIQUE_ID)
    assert unique_id.startswith("2.25.")
    assert unique_id != identifier(second.find(".//rim:RegistryPackage", NS), ebrim.SS_UNIQUE_ID)
    assert codes(package, ebrim.SS_CONTENT_TYPE_CODE)[0][0] == "18748-4"
    assert slot(package, "submissionTime")
    assert package.get("home") == entry_of(first).get("home") == home


def test_rad68_type_code_comes_from_procedure_code_when_present() -> None:
    kos = dept_manifest("022")
    facts = StudyFacts.from_headers(dept_headers("022"))
    facts.procedure_codes = [("", "", ""), ("24627-2", "LN", "Chest CT")]
    request = build_provide_and_register(kos, profile=load_profile("nist-ids"), study_facts=facts)

    assert codes(entry_of(request), ebrim.DE_TYPE_CODE) == [
        ("24627-2", "2.16.840.1.113883.6.1", "Chest CT")]


def test_rad68_unmappable_patient_id_raises() -> None:
    kos = dept_manifest("022")
    facts = dataclasses.replace(StudyFacts.from_headers(dept_headers("022")), patient_id="X-1")

    with pytest.raises(PatientIdMappingError):
        build_provide_and_register(kos, profile=load_profile("nist-ids"), study_facts=facts)


def test_rad68_accession_without_any_authority_has_empty_cx4() -> None:
    profile = dataclasses.replace(load_profile("nist-ids"), accession_authority=None)
    kos = dept_manifest("022")
    request = build_provide_and_register(
        kos, profile=profile, study_facts=StudyFacts.from_headers(dept_headers("022")))

    assert slot(entry_of(request), ebrim.REFERENCE_ID_LIST_SLOT)[0] == (
        f"IDC022-a^^^^{ebrim.REF_ACCESSION}")


# HL7 escaping and character sets -------------------------------------------------------------


def test_hl7_escape_escapes_every_delimiter() -> None:
    assert hl7_escape("a|b^c&d~e\\f") == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"


def test_source_patient_name_reorders_prefix_and_suffix_and_escapes() -> None:
    assert source_patient_name("O&Brien^Mary^Ann^Dr^Jr") == "O\\T\\Brien^Mary^Ann^Jr^Dr"
    assert source_patient_name("Doe^John") == "Doe^John"
    assert source_patient_name("") == ""


def test_rad68_source_patient_info_holds_decoded_japanese_name(tmp_path: Path) -> None:
    header = charset_header(tmp_path, ["", "ISO 2022 IR 87"], JAPANESE_NAME)
    kos = build_manifest(header, [Reference(str(header.SeriesInstanceUID),
                                            str(header.SOPClassUID), str(header.SOPInstanceUID))],
                         retrieve_ae_title="XDSI", retrieve_location_uid="1.2",
                         retrieve_url_base=None, now=NOW)
    request = build_provide_and_register(kos, profile=load_profile("default"),
                                         study_facts=StudyFacts.from_headers([header]))

    xml = etree.tostring(request, encoding="UTF-8", xml_declaration=True)
    assert "PID-5|Yamada^Tarou~山田^太郎~やまだ^たろう".encode() in xml
    info = slot(entry_of(etree.fromstring(xml)), "sourcePatientInfo")
    assert "PID-5|Yamada^Tarou~山田^太郎~やまだ^たろう" in info
    assert repository_schema().validate(etree.fromstring(xml)), repository_schema().error_log
