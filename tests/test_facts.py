"""Index values read straight from the raw bytes equal those pydicom's conversion gives."""

from __future__ import annotations

from pathlib import Path

import pydicom.data
import pytest
from pydicom import dcmread

from dicom import facts
from dicom.facts import InvalidInstance, read_facts
from tests.test_archive import DEPT, dept_images, small_instance

PYDICOM_DATA = Path(pydicom.data.__file__).parent


def _files() -> list[Path]:
    """Every DICOM file at hand: pydicom's own test files, its character-set files (Latin,
    Greek, Cyrillic, Arabic, Hebrew, UTF-8, ISO 2022 Japanese and Korean), and one image of
    each NIST DEPT study found."""
    files = sorted((PYDICOM_DATA / "charset_files").glob("*.dcm"))
    files += sorted((PYDICOM_DATA / "test_files").glob("*.dcm"))
    for number in DEPT:
        folder = dept_images(number)
        if folder.is_dir():
            files += sorted(path for path in folder.rglob("*") if path.is_file())[:1]
    return files


def _by_pydicom_only(monkeypatch) -> None:
    monkeypatch.setattr(facts, "_raw_text", lambda *_args: facts._BY_PYDICOM)


def test_raw_values_read_as_pydicom_reads_them(monkeypatch):
    compared = 0
    for path in _files():
        try:
            fast = read_facts(path)
        except InvalidInstance:
            continue  # no valid UIDs (a fragment, a DICOMDIR): nothing to index
        with monkeypatch.context() as patched:
            _by_pydicom_only(patched)
            assert read_facts(path) == fast, path.name
        compared += 1
    assert compared > 40


@pytest.mark.parametrize("charset, description", [("ISO_IR 100", "Épaule gauche"),
                                                  ("ISO_IR 192", "Schädel – 頭部")])
def test_plain_character_sets_take_the_raw_path(charset, description, tmp_path, monkeypatch):
    """The raw path is really taken for text in a plain encoding, and decodes it right."""
    path = small_instance(tmp_path / "a.dcm", charset=charset, description=description)
    calls = []
    raw_text = facts._raw_text

    def spy(dataset, keyword, encoding):
        value = raw_text(dataset, keyword, encoding)
        calls.append((keyword, value is not facts._BY_PYDICOM))
        return value

    monkeypatch.setattr(facts, "_raw_text", spy)
    assert read_facts(path).study["study_description"] == description
    assert ("StudyDescription", True) in calls
    assert ("PatientName", False) in calls  # person names: pydicom's


def test_code_extensions_are_left_to_pydicom(monkeypatch):
    """ISO 2022 text is 7-bit yet needs its escape sequences read: never the raw path."""
    path = PYDICOM_DATA / "charset_files" / "chrH31.dcm"  # ISO 2022 IR 13 / IR 87
    calls = []
    raw_text = facts._raw_text

    def spy(dataset, keyword, encoding):
        value = raw_text(dataset, keyword, encoding)
        if value is not facts._BY_PYDICOM and value is not None:
            calls.append(keyword)
        return value

    monkeypatch.setattr(facts, "_raw_text", spy)
    read = read_facts(path)
    header = dcmread(path, stop_before_pixels=True)
    assert read.patient["patient_name"] == str(header.PatientName)
    assert set(calls) <= {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                          "SOPClassUID", "StudyDate", "StudyTime", "Modality", "SeriesNumber",
                          "InstanceNumber", "PatientSex", "PatientBirthDate", "SeriesDate",
                          "SeriesTime", "BodyPartExamined", "NumberOfFrames"}


def _data_set(elements: dict[str, bytes], implicit: bool) -> bytes:
    """Bytes of a data set with these raw values (tags in order), Explicit or Implicit VR LE."""
    import struct

    from pydicom.datadict import dictionary_VR, tag_for_keyword

    encoded = b""
    for keyword, value in sorted(elements.items(), key=lambda item: tag_for_keyword(item[0])):
        tag = tag_for_keyword(keyword)
        head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        if implicit:
            encoded += head + struct.pack("<I", len(value)) + value
        else:
            encoded += head + dictionary_VR(tag).encode() + struct.pack("<H", len(value)) + value
    return encoded


PADDED = {
    "SOPClassUID": b"1.2.840.10008.5.1.4.1.1.7\x00",
    "SOPInstanceUID": b"1.2.34 \x00",  # space then NUL: pydicom drops both
    "StudyInstanceUID": b"1.2.35\x00\n",
    "SeriesInstanceUID": b"1.2.36  ",
    "StudyDate": b"20240105",
    "AccessionNumber": b"ACC1 \x00",
    "Modality": b"CT \x00",
    "PatientID": b" PID-1 \x00",
    "StudyDescription": b"CT\x1b(B Head",  # an escape under no character set
    "SeriesDescription": b"",
    "BodyPartExamined": b"HEAD\\NECK ",
    "SeriesNumber": b" 12 ",
    "InstanceNumber": b"3\x00",
}


@pytest.mark.parametrize("implicit", [False, True])
def test_padding_and_empty_values_read_as_pydicom_reads_them(implicit, monkeypatch):
    from dicom.facts import facts_from_head

    syntax = "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"
    data_set = _data_set(PADDED, implicit)
    fast = facts_from_head(data_set, syntax, whole=True)
    assert fast.sop_instance_uid == "1.2.34" and fast.patient["patient_id"] == "PID-1"
    with monkeypatch.context() as patched:
        _by_pydicom_only(patched)
        assert facts_from_head(data_set, syntax, whole=True) == fast


def test_a_sequence_item_with_its_own_character_set_is_read_with_it(tmp_path):
    from pydicom.dataset import Dataset

    path = small_instance(tmp_path / "a.dcm", charset="ISO_IR 100")
    ds = dcmread(path)
    issuer = Dataset()
    issuer.SpecificCharacterSet = "ISO_IR 192"
    issuer.LocalNamespaceEntityID = "Hôpital Nord"
    ds.IssuerOfAccessionNumberSequence = [issuer]
    ds.save_as(path, enforce_file_format=True)
    assert read_facts(path).study["accession_issuer_local_id"] == "Hôpital Nord"
