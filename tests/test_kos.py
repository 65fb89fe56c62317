"""KOS manifest builder (dicom/kos.py): the NIST IDS studies, dciodvfy, character sets, speed."""

from __future__ import annotations

import io
import subprocess
import time
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    KeyObjectSelectionDocumentStorage,
    generate_uid,
)

from dicom.kos import Reference, build_manifest, manifest_summary, value_type_for, write_manifest
from tests.conftest import NIST_IDS, require_tool

# The DEPT studies whose images are in the data set (the others lack their large files).
DEPT_STUDIES = ["002", "003", "011", "021", "022", "024", "041", "042"]
NIST_LOCATION_UID = "1.3.6.1.4.1.21367.13.80.110"
WADO_RS = "http://127.0.0.1:8080/wado-rs"
NOW = datetime(2024, 1, 5, 12, 0, 0, tzinfo=UTC)


@cache
def dept_headers(number: str) -> tuple[Dataset, ...]:
    """The headers of one NIST DEPT study, in file order."""
    images = sorted((NIST_IDS / f"IDS-DEPT{number}-a" / "images").glob("*.dcm"))
    if not images:
        pytest.skip(f"NIST study IDS-DEPT{number}-a is not available")
    return tuple(dcmread(path, stop_before_pixels=True) for path in images)


def references_of(headers: tuple[Dataset, ...]) -> list[Reference]:
    return [
        Reference(str(h.SeriesInstanceUID), str(h.SOPClassUID), str(h.SOPInstanceUID),
                  modality=str(h.Modality))
        for h in headers
    ]


def dept_manifest(number: str) -> Dataset:
    headers = dept_headers(number)
    return build_manifest(
        headers[0], references_of(headers),
        retrieve_ae_title="XDSI", retrieve_location_uid=NIST_LOCATION_UID,
        retrieve_url_base=WADO_RS, now=NOW,
    )


def dciodvfy_errors(path: Path) -> list[str]:
    tool = require_tool("dciodvfy")
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60,
                            check=False)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def evidence(ds: Dataset) -> dict[str, dict[str, dict[str, str]]]:
    """study uid -> series uid -> instance uid -> SOP class uid."""
    out: dict[str, dict[str, dict[str, str]]] = {}
    for study in ds.CurrentRequestedProcedureEvidenceSequence:
        series_map = out.setdefault(str(study.StudyInstanceUID), {})
        for series in study.ReferencedSeriesSequence:
            series_map[str(series.SeriesInstanceUID)] = {
                str(sop.ReferencedSOPInstanceUID): str(sop.ReferencedSOPClassUID)
                for sop in series.ReferencedSOPSequence
            }
    return out


# The NIST DEPT studies ----------------------------------------------------------------------


@pytest.mark.parametrize("number", DEPT_STUDIES)
def test_kos_for_nist_study_passes_dciodvfy_without_errors(number: str, tmp_path: Path) -> None:
    path = tmp_path / "kos.dcm"
    write_manifest(dept_manifest(number), path)

    assert dciodvfy_errors(path) == []


@pytest.mark.parametrize("number", DEPT_STUDIES)
def test_kos_for_nist_study_matches_reference_manifest(number: str, tmp_path: Path) -> None:
    reference = dcmread(NIST_IDS / f"IDS-DEPT{number}-a" / "kos" / "kos.dcm")
    path = tmp_path / "kos.dcm"
    write_manifest(dept_manifest(number), path)
    kos = dcmread(path)

    # Identity: a new KOS in a new series of the same study.
    assert kos.SOPClassUID == KeyObjectSelectionDocumentStorage
    assert kos.Modality == "KO"
    assert kos.SOPInstanceUID != reference.SOPInstanceUID
    assert kos.SeriesInstanceUID != reference.SeriesInstanceUID

    # Same referenced studies, series, instances and SOP classes (NIST ValidateKOS).
    assert evidence(kos) == evidence(reference)
    referenced_series = {s for study in evidence(kos).values() for s in study}
    assert kos.SeriesInstanceUID not in referenced_series

    # Patient and study attributes copied unchanged.
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "StudyInstanceUID", "AccessionNumber", "StudyID", "StudyDate"):
        assert kos.get(keyword) == reference.get(keyword), keyword

    # Title and template.
    title = kos.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == (
        "113030", "DCM", "Manifest")
    assert kos.ContentTemplateSequence[0].TemplateIdentifier == "2010"
    assert kos.ContentTemplateSequence[0].MappingResource == "DCMR"
    assert kos.ValueType == "CONTAINER" and kos.ContinuityOfContent == "SEPARATE"

    # Retrieve attributes in every Referenced Series item.
    study_uid = str(kos.StudyInstanceUID)
    for series in kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence:
        assert series.RetrieveAETitle == "XDSI"
        assert series.RetrieveLocationUID == NIST_LOCATION_UID
        assert series.RetrieveURL == (
            f"{WADO_RS}/studies/{study_uid}/series/{series.SeriesInstanceUID}")

    # One CONTAINS IMAGE item per instance (all DEPT instances are images).
    items = kos.ContentSequence
    assert len(items) == sum(len(s) for s in evidence(kos)[study_uid].values())
    assert {(i.RelationshipType, i.ValueType) for i in items} == {("CONTAINS", "IMAGE")}


def test_kos_drops_empty_procedure_code_item_of_dept002() -> None:
    assert "ProcedureCodeSequence" in dept_headers("002")[0]

    assert "ProcedureCodeSequence" not in dept_manifest("002")


def test_kos_rewrites_acr_nema_study_time_without_colons() -> None:
    assert dept_headers("021")[0].StudyTime == "08:30:00"

    assert dept_manifest("021").StudyTime == "083000"


def test_kos_content_time_is_in_the_study_timezone_offset() -> None:
    kos = dept_manifest("041")  # the images carry Timezone Offset From UTC -0400

    assert kos.TimezoneOffsetFromUTC == "-0400"
    assert (kos.ContentDate, kos.ContentTime[:6]) == ("20240105", "080000")


# Structure -----------------------------------------------------------------------------------


def _header(**attributes: object) -> Dataset:
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "P1"
    ds.StudyInstanceUID = "1.2.3.4"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def test_kos_orders_series_by_first_appearance_and_keeps_instance_order() -> None:
    refs = [
        Reference("1.2.3.4.2", "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.2.9"),
        Reference("1.2.3.4.1", "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.1.5"),
        Reference("1.2.3.4.2", "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.2.1"),
    ]
    kos = build_manifest(_header(), refs, retrieve_ae_title="XDSI", retrieve_location_uid="1.2",
                         retrieve_url_base=None)
    summary = manifest_summary(kos)

    assert list(summary["series"]) == ["1.2.3.4.2", "1.2.3.4.1"]
    assert summary["series"]["1.2.3.4.2"] == ["1.2.3.4.2.9", "1.2.3.4.2.1"]
    content = [str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
               for i in kos.ContentSequence]
    assert content == ["1.2.3.4.2.9", "1.2.3.4.2.1", "1.2.3.4.1.5"]
    assert summary["retrieve_url"] == {"1.2.3.4.2": None, "1.2.3.4.1": None}
    assert summary["retrieve_ae_title"] == "XDSI"
    assert summary["retrieve_location_uid"] == "1.2"


@pytest.mark.parametrize("sop_class, frames, expected", [
    ("1.2.840.10008.5.1.4.1.1.2", None, "IMAGE"),           # CT Image Storage
    ("1.2.840.10008.5.1.4.1.1.3.1", 8, "IMAGE"),            # Ultrasound Multi-frame
    ("1.2.840.10008.5.1.4.1.1.66.4", None, "IMAGE"),        # Segmentation Storage
    ("1.2.840.10008.5.1.4.1.1.9.1.1", None, "WAVEFORM"),    # 12-lead ECG Waveform
    ("1.2.840.10008.5.1.4.1.1.88.11", None, "COMPOSITE"),   # Basic Text SR
    ("1.2.840.10008.5.1.4.1.1.104.1", None, "COMPOSITE"),   # Encapsulated PDF
    ("1.2.840.10008.5.1.4.1.1.11.1", None, "COMPOSITE"),    # Grayscale Softcopy PR
    ("1.2.3.999.1", 4, "IMAGE"),                            # private class with frames
    ("1.2.3.999.1", None, "COMPOSITE"),
])
def test_kos_value_type_follows_sop_class(sop_class: str, frames: int | None,
                                          expected: str) -> None:
    assert value_type_for(sop_class, frames) == expected


def test_kos_mixed_study_gets_one_value_type_per_instance_class(tmp_path: Path) -> None:
    refs = [
        Reference("1.2.3.4.1", "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.1.1"),
        Reference("1.2.3.4.2", "1.2.840.10008.5.1.4.1.1.9.1.1", "1.2.3.4.2.1"),
        Reference("1.2.3.4.3", "1.2.840.10008.5.1.4.1.1.88.11", "1.2.3.4.3.1"),
    ]
    kos = build_manifest(_header(), refs, retrieve_ae_title="XDSI", retrieve_location_uid="1.2",
                         retrieve_url_base=None)

    assert [i.ValueType for i in kos.ContentSequence] == ["IMAGE", "WAVEFORM", "COMPOSITE"]
    write_manifest(kos, tmp_path / "kos.dcm")
    assert dciodvfy_errors(tmp_path / "kos.dcm") == []


def test_kos_without_references_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one referenced instance"):
        build_manifest(_header(), [], retrieve_ae_title="XDSI", retrieve_location_uid="1.2",
                       retrieve_url_base=None)


def test_kos_header_without_study_uid_is_refused() -> None:
    header = _header()
    del header.StudyInstanceUID
    with pytest.raises(ValueError, match="Study Instance UID"):
        build_manifest(header, [Reference("1.2", "1.2.840.10008.5.1.4.1.1.2", "1.2.3")],
                       retrieve_ae_title="XDSI", retrieve_location_uid="1.2",
                       retrieve_url_base=None)


def test_write_manifest_writes_part10_explicit_vr_little_endian() -> None:
    buffer = io.BytesIO()
    kos = dept_manifest("022")
    write_manifest(kos, buffer)
    data = buffer.getvalue()

    assert data[128:132] == b"DICM"
    meta = dcmread(io.BytesIO(data)).file_meta
    assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert meta.MediaStorageSOPClassUID == KeyObjectSelectionDocumentStorage
    assert meta.MediaStorageSOPInstanceUID == kos.SOPInstanceUID
    assert kos.SOPInstanceUID.startswith("2.25.") and kos.SeriesInstanceUID.startswith("2.25.")


# Character sets ------------------------------------------------------------------------------

JAPANESE_NAME = "Yamada^Tarou=山田^太郎=やまだ^たろう"
UTF8_NAME = "Müller^Zoë^Ŝtefan"


def charset_header(tmp_path: Path, charset: str, name: str) -> Dataset:
    """A header written to disk in ``charset`` and read back, as the archive would read it."""
    ds = _header(SpecificCharacterSet=charset, PatientName=name,
                 StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(),
                 SOPClassUID="1.2.840.10008.5.1.4.1.1.7", SOPInstanceUID=generate_uid(),
                 Modality="OT", PatientBirthDate="19700101", PatientSex="F")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "header.dcm"
    ds.save_as(path, enforce_file_format=True)
    return dcmread(path)


@pytest.mark.parametrize("charset, name", [
    ("ISO_IR 192", UTF8_NAME),
    (["", "ISO 2022 IR 87"], JAPANESE_NAME),
])
def test_kos_keeps_specific_character_set_and_name_bytes(tmp_path: Path, charset: object,
                                                         name: str) -> None:
    header = charset_header(tmp_path, charset, name)
    refs = [Reference(str(header.SeriesInstanceUID), str(header.SOPClassUID),
                      str(header.SOPInstanceUID))]
    path = tmp_path / "kos.dcm"
    write_manifest(build_manifest(header, refs, retrieve_ae_title="XDSI",
                                  retrieve_location_uid="1.2", retrieve_url_base=WADO_RS), path)
    kos = dcmread(path)

    assert kos.SpecificCharacterSet == header.SpecificCharacterSet
    assert str(kos.PatientName) == name
    assert kos.PatientName.original_string == header.PatientName.original_string
    assert dciodvfy_errors(path) == []


# Speed ---------------------------------------------------------------------------------------


def test_kos_for_5000_instances_builds_and_encodes_within_two_seconds() -> None:
    header = dept_headers("002")[0]
    refs = [Reference(f"1.2.826.0.1.3680043.10.1.{i // 100}", "1.2.840.10008.5.1.4.1.1.4",
                      f"1.2.826.0.1.3680043.10.2.{i}") for i in range(5000)]

    started = time.perf_counter()
    kos = build_manifest(header, refs, retrieve_ae_title="XDSI",
                         retrieve_location_uid=NIST_LOCATION_UID, retrieve_url_base=WADO_RS)
    buffer = io.BytesIO()
    write_manifest(kos, buffer)
    elapsed = time.perf_counter() - started

    assert len(manifest_summary(dcmread(io.BytesIO(buffer.getvalue())))["sop_classes"]) == 5000
    assert elapsed < 2.0, f"5,000-instance KOS took {elapsed:.2f} s"
