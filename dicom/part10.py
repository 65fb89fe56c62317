"""Part 10 files (DICOM PS3.10): read a source's File Meta Information, write our own.

The archive keeps every data set exactly as it arrived. What it writes is a 128-byte preamble,
``DICM``, a File Meta Information group made here, and then the data set bytes copied unchanged
from the source (a received C-STORE data set or a Part 10 file being imported). Nothing is
decoded and encoded again, so a compressed image keeps its own encoding and a text value keeps
its own character set.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.tag import Tag
from pydicom.uid import UID

# This implementation's identity in the File Meta Information (PS3.7 D.3.3.2).
IMPLEMENTATION_CLASS_UID = "2.25.139916941676867221215654693958989172929"
IMPLEMENTATION_VERSION_NAME = "XDSI_ARCHIVE_1"

CHUNK = 1 << 20
PREAMBLE = b"\x00" * 128 + b"DICM"
META_PEEK = 4096  # a File Meta Information group is a few hundred bytes

# Group 0002 elements read from a source, by element number.
_META_UIDS = {0x0002: "MediaStorageSOPClassUID", 0x0003: "MediaStorageSOPInstanceUID",
              0x0010: "TransferSyntaxUID", 0x0012: "ImplementationClassUID"}
# Explicit VRs with a reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                    b"UR", b"UT", b"UV"}

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
    # Who wrote the meta header: ours means the file can be archived as it is.
    implementation_class_uid: str | None = None


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
        plain = _plain_meta(f.read(META_PEEK))
        if plain is not None:
            values, offset = plain
            meta = {keyword: _str_or_none(values.get(element).decode("ascii", "replace"))
                    if element in values else None for element, keyword in _META_UIDS.items()}
        else:
            f.seek(0)
            try:
                read_preamble(f, False)
                header = _read_file_meta_info(f)
            except Exception as exc:  # pydicom raises several kinds for a broken header
                raise NotDicom(f"unreadable File Meta Information: {exc}") from exc
            offset = f.tell()
            meta = {keyword: _str_or_none(header.get(keyword)) for keyword in _META_UIDS.values()}
    syntax = transfer_syntax_uid or meta["TransferSyntaxUID"]
    if not syntax:
        raise NotDicom("File Meta Information without Transfer Syntax UID")
    return Source(offset, syntax, meta["MediaStorageSOPClassUID"],
                  meta["MediaStorageSOPInstanceUID"], meta["ImplementationClassUID"])


def _plain_meta(head: bytes) -> tuple[dict[int, bytes], int] | None:
    """Group 0002 of a Part 10 file read by hand: {element number: value bytes} and where the
    data set starts; None unless it is the usual plain encoding (Explicit VR Little Endian,
    defined lengths) wholly inside ``head``: then pydicom reads it, slower but lenient.

    Reading the meta header is done for every instance received; by hand it costs a tenth."""
    if len(head) < len(PREAMBLE) or head[128:132] != b"DICM":
        return None
    values: dict[int, bytes] = {}
    position = len(PREAMBLE)
    while position + 8 <= len(head):
        group, element = struct.unpack_from("<HH", head, position)
        if group != 0x0002:
            return (values, position) if values else None
        vr = head[position + 4:position + 6]
        if vr in _LONG_LENGTH_VRS:
            start = position + 12
            length = struct.unpack_from("<I", head, position + 8)[0] if start <= len(head) else 0
        elif vr.isalpha() and vr.isupper():
            start = position + 8
            length = struct.unpack_from("<H", head, position + 6)[0]
        else:
            return None  # not Explicit VR: an old or broken writer
        if length == 0xFFFFFFFF or start + length > len(head):
            return None
        values[element] = head[start:start + length]
        position = start + length
    return None  # the header goes on past ``head``, or there is no data set


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                    source_ae_title: str | None = None) -> bytes:
    """Preamble, ``DICM`` and our File Meta Information group, encoded.

    Encoded by hand (Explicit VR Little Endian, PS3.10 7.1): it is written for every instance
    received, and this is several times faster than going through a pydicom Dataset."""
    elements = [
        _element(0x0001, "OB", b"\x00\x01"),
        _element(0x0002, "UI", _uid_bytes(sop_class_uid)),
        _element(0x0003, "UI", _uid_bytes(sop_instance_uid)),
        _element(0x0010, "UI", _uid_bytes(transfer_syntax_uid)),
        _element(0x0012, "UI", _uid_bytes(IMPLEMENTATION_CLASS_UID)),
        _element(0x0013, "SH", _text_bytes(IMPLEMENTATION_VERSION_NAME)),
    ]
    if source_ae_title and source_ae_title.strip():
        ae_title = source_ae_title.strip()[:16].encode("ascii", "replace")
        elements.append(_element(0x0016, "AE", _text_bytes(ae_title.decode("ascii"))))
    body = b"".join(elements)
    group_length = _element(0x0000, "UL", struct.pack("<I", len(body)))
    return PREAMBLE + group_length + body


def _element(element: int, vr: str, value: bytes) -> bytes:
    """One group 0002 element; OB has the 4-byte length form."""
    if vr == "OB":
        return struct.pack("<HH2sHI", 0x0002, element, b"OB", 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr.encode("ascii"), len(value)) + value


def _uid_bytes(uid: str) -> bytes:
    value = uid.encode("ascii")
    return value + b"\x00" if len(value) % 2 else value  # UI pads with NUL


def _text_bytes(text: str) -> bytes:
    value = text.encode("ascii")
    return value + b" " if len(value) % 2 else value


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
