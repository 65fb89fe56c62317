"""Index values read straight from the raw bytes equal those pydicom's conversion gives."""

from __future__ import annotations

import json
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


def _head_of(path: Path) -> tuple[bytes, str] | None:
    """The data set bytes and transfer syntax of a Part 10 file; None for one without its
    File Meta Information."""
    from tests.test_archive import split_part10

    try:
        meta, data_set = split_part10(path.read_bytes())
    except Exception:  # noqa: BLE001 - no preamble or meta group: not a Part 10 file
        return None
    syntax = meta.get("TransferSyntaxUID")
    return (data_set, str(syntax)) if syntax else None


def _by_pydicom_reader(monkeypatch) -> None:
    monkeypatch.setattr(facts.header_scan, "scan", lambda *_args, **_kwargs: None)


def test_heads_scanned_give_what_pydicoms_reader_gives(monkeypatch):
    """On every Part 10 file at hand, whole and cut to its first 64 KB: the values read from
    the scanned elements equal those from pydicom's reader, and those of the whole file."""
    from dicom.facts import facts_from_head

    scanned = 0
    for path in _files():
        found = _head_of(path)
        if found is None:
            continue
        data_set, syntax = found
        try:
            expected = read_facts(path)
        except InvalidInstance:
            continue
        for head, whole in ((data_set, True), (data_set[:1 << 16], len(data_set) <= 1 << 16)):
            try:
                fast = facts_from_head(head, syntax, whole=whole)
            except InvalidInstance:
                fast = None
            with monkeypatch.context() as patched:
                _by_pydicom_reader(patched)
                try:
                    slow = facts_from_head(head, syntax, whole=whole)
                except InvalidInstance:
                    slow = None
            assert fast == slow, path.name
            if fast is not None:
                assert fast == expected, path.name
                scanned += 1
    assert scanned > 60


def _element(tag: int, vr: bytes, value: bytes, implicit: bool, undefined: bool = False) -> bytes:
    import struct

    length = 0xFFFFFFFF if undefined else len(value)
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack("<L", length) + value
    if vr in (b"SQ", b"UN", b"OB", b"OW", b"UT"):
        return head + vr + b"\0\0" + struct.pack("<L", length) + value
    return head + vr + struct.pack("<H", length) + value


def _item(content: bytes, undefined: bool) -> bytes:
    import struct

    if undefined:
        return b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + content + b"\xfe\xff\x0d\xe0\0\0\0\0"
    return b"\xfe\xff\x00\xe0" + struct.pack("<L", len(content)) + content


SEQUENCE_END = b"\xfe\xff\xdd\xe0\0\0\0\0"


@pytest.mark.parametrize("implicit", [False, True])
def test_sequences_of_undefined_length_are_walked_and_kept(implicit):
    """Nested sequences of undefined length, items of either kind, and a UN element of
    undefined length are passed; a wanted sequence is kept as its items' bytes."""
    from dicom.facts import facts_from_head

    def code_item(implicit: bool) -> bytes:
        return (_element(0x00080100, b"SH", b"P1", implicit)
                + _element(0x00080102, b"SH", b"99X ", implicit)
                + _element(0x00080104, b"LO", b"Head CT ", implicit))

    code = code_item(implicit)
    nested = _element(0x00081150, b"UI", b"1.2.3\0", implicit) + _element(
        0x0040A170, b"SQ", _item(code, True) + SEQUENCE_END, implicit, undefined=True)
    data_set = (
        _element(0x00080016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\0", implicit)
        + _element(0x00080018, b"UI", b"1.2.34\0", implicit)
        + _element(0x00081032, b"SQ", _item(code, False) + _item(code, True) + SEQUENCE_END,
                   implicit, undefined=True)
        + _element(0x00081140, b"SQ", _item(nested, True) + _item(nested, False) + SEQUENCE_END,
                   implicit, undefined=True)
        # A UN sequence's items are Implicit VR whatever the data set's syntax (PS3.5 6.2.2).
        + _element(0x00091010, b"UN", _item(code_item(True), True) + SEQUENCE_END, implicit,
                   undefined=True)
        + _element(0x0020000D, b"UI", b"1.2.35\0", implicit)
        + _element(0x0020000E, b"UI", b"1.2.36\0", implicit)
    )
    syntax = "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"
    elements = facts.header_scan.scan(data_set, implicit=implicit, wanted=facts._WANTED,
                                      last=facts.LAST_TAG, whole=True)
    assert elements is not None
    assert 0x00081032 in elements and 0x00081140 not in elements
    read = facts_from_head(data_set, syntax, whole=True)
    assert json.loads(read.study["procedure_codes"]) == [["P1", "99X", "Head CT"]] * 2
    assert read.series_uid == "1.2.36"

    with pytest.raises(facts.header_scan.Short):  # cut inside the nested sequence
        facts.header_scan.scan(data_set[:len(data_set) // 2], implicit=implicit,
                               wanted=facts._WANTED, last=facts.LAST_TAG, whole=False)
    assert facts_from_head(data_set[:len(data_set) // 2], syntax, whole=False) is None


def test_what_the_scan_does_not_understand_is_left_to_pydicom():
    scan = facts.header_scan.scan
    kwargs = {"wanted": facts._WANTED, "last": facts.LAST_TAG, "whole": True}
    uid = _element(0x00080018, b"UI", b"1.2.34\0", False)
    assert scan(uid, implicit=False, **kwargs) is not None
    assert scan(uid.replace(b"UI", b"ZZ"), implicit=False, **kwargs) is None  # no VR
    undefined_text = _element(0x00081030, b"UT", b"x", False, undefined=True)
    assert scan(undefined_text, implicit=False, **kwargs) is None
    broken_item = _element(0x00081032, b"SQ", b"\xfe\xff\x99\xe0\0\0\0\0" + SEQUENCE_END,
                           False, undefined=True)
    assert scan(broken_item, implicit=False, **kwargs) is None
    assert scan(uid[:-2], implicit=False, **kwargs) is None  # the data set itself is cut


def _scan(data: bytes, implicit: bool):
    return facts.header_scan.scan(data, implicit=implicit, wanted=facts._WANTED,
                                  last=facts.LAST_TAG, whole=True)


@pytest.mark.parametrize("implicit", [False, True])
def test_what_pydicom_reads_another_way_is_left_to_it(implicit):
    """A defined-length item whose element runs past its end, sequences nested deeper than
    MAX_DEPTH, and (Implicit VR) an undefined length on a tag the dictionary does not call a
    sequence, which pydicom reads as bytes up to the first delimiter: all left to pydicom."""
    uid = _element(0x00080018, b"UI", b"1.2.34\0", implicit)
    import struct

    value = b"1.2\0"
    length_size = 4 if implicit else 2
    overrun = (_element(0x00081150, b"UI", value, implicit)[:-len(value) - length_size]
               + struct.pack("<L" if implicit else "<H", 12) + value)  # 12 in a 4-byte value
    broken_item = _element(0x00081140, b"SQ", _item(overrun, False) + SEQUENCE_END,
                           implicit, undefined=True)
    assert _scan(uid + broken_item, implicit) is None

    nested = b""
    for _ in range(facts.header_scan.MAX_DEPTH + 1):
        nested = _element(0x00081140, b"SQ", _item(nested, True) + SEQUENCE_END, implicit,
                          undefined=True)
    assert _scan(uid + nested, implicit) is None
    shallow = b""
    for _ in range(facts.header_scan.MAX_DEPTH - 1):
        shallow = _element(0x00081140, b"SQ", _item(shallow, True) + SEQUENCE_END, implicit,
                           undefined=True)
    assert _scan(uid + shallow, implicit) is not None

    if implicit:
        not_a_sequence = _element(0x00081030, b"LO", _item(b"", True) + SEQUENCE_END, True,
                                  undefined=True)
        assert _scan(uid + not_a_sequence, True) is None
        private = _element(0x00091010, b"", _item(b"", True) + SEQUENCE_END, True,
                           undefined=True)
        assert _scan(uid + private, True) is not None  # starts with an item: a sequence


def test_a_value_pydicom_cannot_convert_makes_the_instance_invalid():
    """A UID element whose explicit VR no standard knows: unreadable (0xC000 for a sender),
    not an error of the archive's."""
    from dicom.facts import facts_from_head

    data_set = (_element(0x00080016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\0", False)
                + _element(0x00080018, b"U\xe0", b"1.2.34\0", False))
    with pytest.raises(InvalidInstance):
        facts_from_head(data_set, "1.2.840.10008.1.2.1", whole=True)
