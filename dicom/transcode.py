"""Transfer-syntax conversion for retrieve: decide what can be produced, then produce it.

The rule (RAD TF-3 4.69, RAD69-005): send the stored encoding when the consumer listed it;
otherwise the first listed syntax that can be produced without loss of what is stored:
decompressed to Explicit or Implicit VR Little Endian, or compressed losslessly to RLE,
JPEG-LS lossless or JPEG 2000 lossless (pydicom's encoders). Nothing is ever encoded lossily,
and an instance is never labelled with a syntax it is not in. JPEG Lossless (Process 14) has
no encoder here, so it is produced only when it is what is stored.
"""

from __future__ import annotations

import io
from typing import BinaryIO, Iterator

from pydicom import dcmread
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

UNCOMPRESSED = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
# Lossless encoders pydicom offers (with pyjpegls and pylibjpeg-openjpeg installed).
LOSSLESS_ENCODERS = {RLELossless, JPEGLSLossless, JPEG2000Lossless}
CHUNK = 1 << 20


class TranscodeError(Exception):
    pass


def is_known(uid: str) -> bool:
    """A transfer syntax UID that DICOM defines (PS3.6 Annex A)."""
    return UID(uid).is_transfer_syntax


def choose_syntax(stored: str, requested: list[str], has_pixel_data: bool = True) -> str | None:
    """The syntax to send, in the consumer's order of preference, or None if none can be made."""
    if stored in requested:
        return stored
    for wanted in requested:
        if can_produce(stored, wanted, has_pixel_data):
            return wanted
    return None


def can_produce(stored: str, wanted: str, has_pixel_data: bool = True) -> bool:
    if wanted == stored:
        return True
    if not is_known(wanted) or not is_known(stored):
        return False
    if wanted in UNCOMPRESSED:
        # Any syntax pydicom can decode can become uncompressed; without pixel data only the
        # encoding of the data set changes.
        return stored in UNCOMPRESSED or not has_pixel_data or UID(stored).is_compressed
    if wanted in LOSSLESS_ENCODERS:
        return has_pixel_data and stored in UNCOMPRESSED
    return False


def transcode(source: BinaryIO, target: str) -> bytes:
    """The Part 10 file ``source`` re-encoded in ``target`` (one instance in memory at a time)."""
    ds = dcmread(source)
    stored = str(ds.file_meta.TransferSyntaxUID)
    has_pixels = "PixelData" in ds
    try:
        if has_pixels and UID(stored).is_compressed:
            ds.decompress(generate_instance_uid=False)  # now Explicit VR Little Endian
        if target in LOSSLESS_ENCODERS:
            # Lossless re-encoding keeps the instance's identity (pydicom would make a new UID).
            ds.compress(target, generate_instance_uid=False)
        else:
            ds.file_meta.TransferSyntaxUID = target
    except Exception as exc:  # decoder or encoder refused the pixel data
        raise TranscodeError(f"cannot convert from {stored} to {target}: {exc}") from exc

    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=target == ImplicitVRLittleEndian, little_endian=True)
    return out.getvalue()


def transcoded_chunks(path, target: str) -> Iterator[bytes]:
    """A lazy byte stream of the instance at ``path`` in ``target``: work starts when read."""
    with open(path, "rb") as source:
        data = transcode(source, target)
    for offset in range(0, len(data), CHUNK):
        yield data[offset:offset + CHUNK]
