"""Part 10 files (DICOM PS3.10): read a source's File Meta Information, write our own.

The archive keeps every data set exactly as it arrived. What it writes is a 128-byte preamble,
``DICM``, a File Meta Information group made here, and then the data set bytes copied unchanged
from the source (a received C-STORE data set or a Part 10 file being imported). Nothing is
decoded and encoded again, so a compressed image keeps its own encoding and a text value keeps
its own character set.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import UID

# This implementation's identity in the File Meta Information (PS3.7 D.3.3.2).
IMPLEMENTATION_CLASS_UID = "2.25.139916941676867221215654693958989172929"
IMPLEMENTATION_VERSION_NAME = "XDSI_ARCHIVE_1"

CHUNK = 1 << 20
PREAMBLE = b"\x00" * 128 + b"DICM"

SOP_CLASS_UID = Tag(0x0008, 0x0016)
SOP_INSTANCE_UID = Tag(0x0008, 0x0018)


class NotDicom(ValueError):
    """The file is not a DICOM Part 10 file, or its File Meta Information is unreadable."""


@dataclass(frozen=True)
class Source:
    """Where the data set starts in a source file, and what its meta header (if any) says."""

    offset: int
    transfer_syntax_uid: str
    sop_class_uid: str | None
    sop_instance_uid: str | None


def is_part10(path: str | Path) -> bool:
    """True if the file has the Part 10 preamble and ``DICM`` prefix."""
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def read_source(path: str | Path, *, is_part10: bool, transfer_syntax_uid: str | None) -> Source:
    """Locate the data set in ``path``.

    A Part 10 file gives its offset and UIDs from its meta header (``transfer_syntax_uid``
    overrides its Transfer Syntax when given). A bare data set starts at 0 and needs
    ``transfer_syntax_uid``; its SOP UIDs are read from its first elements."""
    if not is_part10:
        if not transfer_syntax_uid:
            raise ValueError("a bare data set needs its transfer_syntax_uid")
        sop_class, sop_instance = _peek_uids(path, transfer_syntax_uid)
        return Source(0, transfer_syntax_uid, sop_class, sop_instance)

    with open(path, "rb") as f:
        try:
            read_preamble(f, False)
            meta = _read_file_meta_info(f)
        except Exception as exc:  # pydicom raises several kinds for a broken header
            raise NotDicom(f"unreadable File Meta Information: {exc}") from exc
        offset = f.tell()
    syntax = transfer_syntax_uid or str(meta.get("TransferSyntaxUID", "") or "")
    if not syntax:
        raise NotDicom("File Meta Information without Transfer Syntax UID")
    return Source(offset, syntax, _str_or_none(meta.get("MediaStorageSOPClassUID")),
                  _str_or_none(meta.get("MediaStorageSOPInstanceUID")))


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                    source_ae_title: str | None = None) -> bytes:
    """Preamble, ``DICM`` and our File Meta Information group, encoded."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax_uid
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if source_ae_title:
        meta.SourceApplicationEntityTitle = source_ae_title.strip()[:16]
    buffer = DicomBytesIO()
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return PREAMBLE + buffer.getvalue()


def copy_from(source: BinaryIO, offset: int, sinks: list) -> None:
    """Copy ``source`` from ``offset`` to its end into each sink (``write``/``update``)."""
    source.seek(offset)
    for chunk in iter(lambda: source.read(CHUNK), b""):
        for sink in sinks:
            sink(chunk)


def _peek_uids(path: str | Path, transfer_syntax_uid: str) -> tuple[str | None, str | None]:
    """SOP Class and Instance UIDs from the start of a bare data set."""
    syntax = UID(transfer_syntax_uid)
    with open(path, "rb") as f:
        head = f.read(CHUNK)
    if syntax.is_deflated:
        # The elements we want come first: inflating the first chunk is enough.
        head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(head)
    try:
        dataset = read_dataset(BytesIO(head), syntax.is_implicit_VR, syntax.is_little_endian,
                               stop_when=lambda tag, _vr, _length: tag > SOP_INSTANCE_UID,
                               specific_tags=[SOP_CLASS_UID, SOP_INSTANCE_UID])
    except Exception as exc:
        raise NotDicom(f"unreadable data set: {exc}") from exc
    return _str_or_none(dataset.get("SOPClassUID")), _str_or_none(dataset.get("SOPInstanceUID"))


def _str_or_none(value) -> str | None:
    text = str(value or "").strip().rstrip("\x00")
    return text or None
