"""What the index keeps of an instance: values read from its header, ready for the index rows.

Only the header is read (never the pixel data), and only the elements listed in ``TAGS``.
Text is decoded with the instance's Specific Character Set (by pydicom, or straight from
the bytes where that gives the same text, see ``_raw_text``); a value that cannot be
read is left empty rather than refusing the instance, because the bytes are kept as received
and the index is only a guide to them. The four UIDs are required and checked.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from dicom import header_scan

# A UID (PS3.5 9.1): dotted digits, at most 64 characters.
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")

PATIENT_KEYS = ("PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex")
STUDY_KEYS = ("StudyInstanceUID", "AccessionNumber", "IssuerOfAccessionNumberSequence",
              "StudyDate", "StudyTime", "StudyID", "StudyDescription", "ReferringPhysicianName",
              "ProcedureCodeSequence")
SERIES_KEYS = ("SeriesInstanceUID", "Modality", "SeriesNumber", "BodyPartExamined",
               "SeriesDescription", "SeriesDate", "SeriesTime")
INSTANCE_KEYS = ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "NumberOfFrames")

TAGS = [tag_for_keyword(k) for k in ("SpecificCharacterSet", *PATIENT_KEYS, *STUDY_KEYS,
                                     *SERIES_KEYS, *INSTANCE_KEYS)]
LAST_TAG = max(TAGS)  # reading stops after it: what follows (pixel data, frames) is not needed
_WANTED = frozenset(int(tag) for tag in TAGS)
_SPECIFIC_CHARACTER_SET = tag_for_keyword("SpecificCharacterSet")
HEAD_FIRST_TRY = 1 << 16

# A value is read straight from its bytes when pydicom's conversion would give the same text,
# at a fraction of the cost: a single value of a VR whose bytes are ASCII in every character
# set (PS3.5 6.2), or of a text VR in a character set that is one plain encoding. Anything
# else (several values, code extensions, converted elements) goes through pydicom.
_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"})
_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})  # not PN: pydicom normalises it
_PLAIN_ENCODINGS = {None: "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin_1",
                    "ISO_IR 192": "utf_8"}
_BY_PYDICOM = object()  # _raw_text's answer when the bytes alone cannot tell


class InvalidInstance(ValueError):
    """The data set cannot be archived: unreadable, or a required UID is missing or malformed."""


@dataclass
class Facts:
    """Column values of the four index rows for one instance (index column names)."""

    patient: dict[str, Any]
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]

    @property
    def study_uid(self) -> str:
        return self.study["study_instance_uid"]

    @property
    def series_uid(self) -> str:
        return self.series["series_instance_uid"]

    @property
    def sop_instance_uid(self) -> str:
        return self.instance["sop_instance_uid"]


def read_facts(part10_path: str | Path) -> Facts:
    """Read the index values from the header of a Part 10 file."""
    try:
        header = dcmread(part10_path, stop_before_pixels=True, specific_tags=TAGS)
    except Exception as exc:  # pydicom raises many kinds for broken data
        raise InvalidInstance(f"unreadable data set: {exc}") from exc
    return facts_of(header)


def facts_from_head(head: bytes, transfer_syntax_uid: str, *, whole: bool) -> Facts | None:
    """Read the index values from the first bytes of a data set (``whole``: all of it).

    None when the elements wanted do not all lie within ``head``, or the data set is deflated:
    then ``read_facts`` reads the file. Parsing bytes already in memory (those just hashed)
    costs a fraction of opening the file again with ``dcmread``."""
    syntax = _syntax(transfer_syntax_uid)
    if syntax is None:
        return None
    is_implicit_vr, is_little_endian = syntax
    if is_little_endian:
        try:
            elements = header_scan.scan(head, implicit=is_implicit_vr, wanted=_WANTED,
                                        last=LAST_TAG, whole=whole)
        except header_scan.Short:
            return None
        if elements is not None:
            return facts_of(_dataset_of(elements, is_implicit_vr))

    # The elements wanted are usually in the first few KB: try those alone first, as the
    # parser copies what it is given.
    for size in (HEAD_FIRST_TRY, len(head)):
        buffer = _Head(head[:size], whole and size >= len(head))
        try:
            header = read_dataset(buffer, is_implicit_vr, is_little_endian,
                                  stop_when=lambda tag, _vr, _length: tag > LAST_TAG,
                                  specific_tags=TAGS)
        except _Head.Short:
            if size >= len(head):
                return None
            continue
        except Exception as exc:  # pydicom raises many kinds for broken data
            raise InvalidInstance(f"unreadable data set: {exc}") from exc
        return facts_of(header)
    return None


@functools.lru_cache(maxsize=64)
def _syntax(transfer_syntax_uid: str) -> tuple[bool, bool] | None:
    """(Implicit VR, Little Endian) of a transfer syntax; None for a deflated or unknown one."""
    syntax = UID(transfer_syntax_uid)
    if syntax.is_deflated or not syntax.is_transfer_syntax:
        return None
    return syntax.is_implicit_VR, syntax.is_little_endian


def _dataset_of(elements: dict, is_implicit_vr: bool) -> Dataset:
    """A data set of the raw elements (``elements`` becomes its own: pydicom converts them in
    place), with the character set its reader would give it."""
    encoding = default_encoding
    if _SPECIFIC_CHARACTER_SET in elements:
        try:
            value = convert_raw_data_element(elements[_SPECIFIC_CHARACTER_SET]).value
            encoding = convert_encodings(value)
        except Exception as exc:  # pydicom raises many kinds for broken data
            raise InvalidInstance(f"unreadable data set: {exc}") from exc
    dataset = Dataset(elements)
    dataset.set_original_encoding(is_implicit_vr, True, encoding)
    return dataset


class _Head(BytesIO):
    """The first bytes of a data set; reading or seeking past them raises ``Short`` (unless
    they are the whole data set) instead of looking like the data set's end."""

    class Short(Exception):
        pass

    def __init__(self, head: bytes, whole: bool):
        super().__init__(head)
        self._size = len(head)
        self._whole = whole

    def read(self, size: int | None = -1) -> bytes:
        if not self._whole and (size is None or size < 0 or self.tell() + size > self._size):
            raise self.Short
        return super().read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        position = super().seek(offset, whence)
        if not self._whole and position > self._size:
            raise self.Short
        return position


def facts_of(header: Dataset) -> Facts:
    """The index values of a data set; InvalidInstance when a value pydicom must convert is
    broken beyond reading (a UID with a VR no standard knows, say)."""
    try:
        return _facts_of(header)
    except InvalidInstance:
        raise
    except Exception as exc:  # pydicom raises many kinds for broken data
        raise InvalidInstance(f"unreadable data set: {exc}") from exc


def _facts_of(header: Dataset) -> Facts:
    uids = {keyword: _uid(header, keyword) for keyword in
            ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")}
    charset = _charset(header)
    encoding = _PLAIN_ENCODINGS.get(charset, "")

    def text(keyword: str, dataset: Dataset | None = header) -> str | None:
        # A sequence item may have a character set of its own: its text is pydicom's to read.
        return _text_in(dataset, keyword, encoding if dataset is header else "")

    patient = {
        "patient_id": text("PatientID") or "",
        "issuer_of_patient_id": text("IssuerOfPatientID") or "",
        "patient_name": text("PatientName"),
        "patient_birth_date": text("PatientBirthDate"),
        "patient_sex": text("PatientSex"),
        "specific_character_set": charset,
    }
    issuer = _first_item(header, "IssuerOfAccessionNumberSequence")
    study = {
        "study_instance_uid": uids["StudyInstanceUID"],
        "accession_number": text("AccessionNumber"),
        "accession_issuer_local_id": text("LocalNamespaceEntityID", issuer),
        "accession_issuer_universal_id": text("UniversalEntityID", issuer),
        "accession_issuer_universal_id_type": text("UniversalEntityIDType", issuer),
        "study_date": text("StudyDate"),
        "study_time": text("StudyTime"),
        "study_id": text("StudyID"),
        "study_description": text("StudyDescription"),
        "referring_physician_name": text("ReferringPhysicianName"),
        "procedure_codes": json.dumps(_codes(header, "ProcedureCodeSequence")),
        "specific_character_set": charset,
    }
    series = {
        "series_instance_uid": uids["SeriesInstanceUID"],
        "modality": text("Modality"),
        "series_number": _int(header, "SeriesNumber"),
        "body_part_examined": text("BodyPartExamined"),
        "series_description": text("SeriesDescription"),
        "series_date": text("SeriesDate"),
        "series_time": text("SeriesTime"),
    }
    instance = {
        "sop_instance_uid": uids["SOPInstanceUID"],
        "sop_class_uid": uids["SOPClassUID"],
        "instance_number": _int(header, "InstanceNumber"),
        "number_of_frames": _int(header, "NumberOfFrames"),
    }
    return Facts(patient, study, series, instance)


def valid_uid(value: str | None) -> bool:
    return bool(value) and len(value) <= 64 and UID_PATTERN.match(value) is not None


def _uid(header: Dataset, keyword: str) -> str:
    value = _raw_text(header, keyword, "")
    if value is _BY_PYDICOM:
        value = str(header.get(keyword, "") or "").strip().rstrip("\x00")
    value = value or ""
    if not valid_uid(value):
        raise InvalidInstance(f"{keyword} is missing or not a valid UID")
    return value


def _charset(header: Dataset) -> str | None:
    value = header.get("SpecificCharacterSet")
    if value is None or value == "":
        return None
    values = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    return "\\".join(str(v).strip() for v in values)


def _text(dataset: Dataset | None, keyword: str) -> str | None:
    """The value as decoded text (multiple values joined by backslash), None when empty."""
    return _text_in(dataset, keyword, "")


def _text_in(dataset: Dataset | None, keyword: str, encoding: str) -> str | None:
    """``_text``, knowing the data set's plain encoding ("" when it has none)."""
    if dataset is None:
        return None
    value = _raw_text(dataset, keyword, encoding)
    if value is not _BY_PYDICOM:
        return value
    try:
        value = dataset.get(keyword)
    except Exception:  # noqa: BLE001 - an undecodable value: the index entry stays empty
        return None
    if value is None or value == "":
        return None
    if isinstance(value, (MultiValue, list, tuple)):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    text = text.strip().rstrip("\x00")
    return text or None


def _raw_text(dataset: Dataset, keyword: str, encoding: str):
    """The value's text from its bytes (None when absent or empty), or _BY_PYDICOM."""
    element = dataset.get_item(keyword)
    if element is None:
        return None
    if type(element) is not RawDataElement or element.value is None:
        return _BY_PYDICOM
    value = element.value
    if b"\\" in value or b"\x1b" in value:  # several values, or code extension escapes
        return _BY_PYDICOM
    vr = element.VR or _dictionary_vr(element.tag)  # Implicit VR: the dictionary's, as pydicom
    if vr in _ASCII_VRS:
        encoding = "ascii"
    elif vr not in _TEXT_VRS or not encoding:
        return _BY_PYDICOM
    try:
        text = value.decode(encoding)
    except UnicodeDecodeError:
        return _BY_PYDICOM
    # Padding as pydicom drops it: trailing spaces, NULs and other white space in any order.
    return text.rstrip(" \x00").strip().rstrip("\x00") or None


def _dictionary_vr(tag) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:  # a private or unknown tag
        return None


def _int(dataset: Dataset, keyword: str) -> int | None:
    text = _text(dataset, keyword)
    try:
        return int(float(text.split("\\")[0])) if text else None
    except ValueError:
        return None


def _first_item(dataset: Dataset, keyword: str) -> Dataset | None:
    try:
        sequence = dataset.get(keyword)
        return sequence[0] if sequence else None
    except Exception:  # noqa: BLE001 - an unreadable sequence is left out of the index
        return None


def _codes(dataset: Dataset, keyword: str) -> list[list[str]]:
    """[code value, coding scheme designator, code meaning] of each complete item."""
    codes = []
    try:
        items = dataset.get(keyword) or []
    except Exception:  # noqa: BLE001 - an unreadable sequence is left out of the index
        return codes
    for item in items:
        code = [_text(item, "CodeValue") or _text(item, "LongCodeValue")
                or _text(item, "URNCodeValue"),
                _text(item, "CodingSchemeDesignator"), _text(item, "CodeMeaning")]
        if all(code):
            codes.append(code)
    return codes
