"""Transfer-syntax conversion for retrieve: decide what can be produced, then produce it.

The rule (RAD TF-3 4.69, RAD69-005): send the stored encoding when the consumer listed it;
otherwise the first listed syntax, in the consumer's order, that can be produced without losing
anything that is stored:

- decompressed to Explicit or Implicit VR Little Endian, from any syntax pydicom can decode
  (a lossy original keeps Lossy Image Compression = "01", so nobody mistakes it for an original);
- compressed losslessly to RLE, JPEG-LS lossless or JPEG 2000 lossless (pydicom's encoders), or
  to JPEG Lossless (Process 14, and its Selection Value 1 form) with dcmtk's ``dcmcjpeg`` when
  that tool is installed (no Python encoder exists for it). Lossy originals are not recompressed.

Nothing is ever encoded lossily, an instance is never labelled with a syntax it is not in, and
an unknown syntax UID cannot be produced. One instance is in memory at a time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

JPEG_LOSSLESS_PROCESS_14 = "1.2.840.10008.1.2.4.57"

# Syntaxes whose pixel data are native (not encapsulated): the data set is re-encoded as is.
NATIVE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}
UNCOMPRESSED_TARGETS = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
PYDICOM_ENCODERS = {RLELossless, JPEGLSLossless, JPEG2000Lossless}
DCMTK_JPEG = {JPEGLosslessSV1: "+e1", JPEG_LOSSLESS_PROCESS_14: "+el"}

# JPEG processes dcmdjpeg decodes, as a fallback for pydicom.
DCMTK_DECODES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", JPEG_LOSSLESS_PROCESS_14,
                 JPEGLosslessSV1}

# What each lossless encoder accepts (pydicom's encoder documentation; dcmcjpeg's lossless
# codec for JPEG). Colour is limited to the forms whose photometric value stays unchanged.
_ENCODER_LIMITS = {
    RLELossless: (1, 16, {"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL"}),
    JPEGLSLossless: (2, 16, {"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL"}),
    JPEG2000Lossless: (1, 16, {"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB"}),
    JPEGLosslessSV1: (2, 16, {"MONOCHROME1", "MONOCHROME2"}),
    JPEG_LOSSLESS_PROCESS_14: (2, 16, {"MONOCHROME1", "MONOCHROME2"}),
}
# Compressed syntaxes that are lossless by definition; any other compressed one may be lossy.
LOSSLESS_COMPRESSED = {
    JPEG_LOSSLESS_PROCESS_14, JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless, RLELossless,
    "1.2.840.10008.1.2.4.201",  # High-Throughput JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.202",  # High-Throughput JPEG 2000 with RPCL Options (Lossless Only)
}
COPY_CHUNK = 1 << 20


class TranscodeError(Exception):
    """The instance cannot be produced in the asked syntax."""


@dataclass(frozen=True)
class PixelInfo:
    """The facts about an instance's pixel data that decide what can be made of it."""

    has_pixel_data: bool
    photometric: str | None = None
    bits_allocated: int | None = None
    bits_stored: int | None = None
    samples_per_pixel: int | None = None

    @classmethod
    def of(cls, ds: Dataset) -> PixelInfo:
        # Rows and Bits Allocated mark an image; Float Pixel Data images have 32/64 bits
        # allocated and so fall outside every encoder's limits below.
        has_pixels = "PixelData" in ds or ("Rows" in ds and "BitsAllocated" in ds)
        return cls(
            has_pixel_data=has_pixels,
            photometric=str(ds.get("PhotometricInterpretation", "")) or None,
            bits_allocated=ds.get("BitsAllocated"),
            bits_stored=ds.get("BitsStored"),
            samples_per_pixel=ds.get("SamplesPerPixel"),
        )

    @classmethod
    def read(cls, source: str | os.PathLike | BinaryIO) -> PixelInfo:
        """From the header only: the pixel data are not read."""
        return cls.of(dcmread(source, stop_before_pixels=True))


def is_known(uid: str) -> bool:
    """A transfer syntax UID that DICOM defines (PS3.6 Annex A)."""
    return UID(uid).is_transfer_syntax


def dcmtk_jpeg_available() -> bool:
    return shutil.which("dcmcjpeg") is not None


def choose_syntax(stored_syntax: str, requested: list[str], info: PixelInfo | None) -> str | None:
    """The syntax to send, in the consumer's order of preference, or None if none can be made.

    ``info`` may be None when ``needs_pixel_info`` says so (the stored syntax was requested)."""
    if stored_syntax in requested:
        return stored_syntax
    for wanted in requested:
        if can_produce(stored_syntax, wanted, info):
            return wanted
    return None


def needs_pixel_info(stored_syntax: str, requested: list[str]) -> bool:
    """Whether choose_syntax needs the header facts (reading them costs one file open)."""
    return stored_syntax not in requested


def can_produce(stored_syntax: str, target_syntax: str, info: PixelInfo | None) -> bool:
    """Whether ``transcode`` can turn an instance stored in one syntax into the other.

    Without ``info`` only the syntaxes decide: no compression is offered then."""
    if target_syntax == stored_syntax:
        return True
    if not is_known(target_syntax) or not is_known(stored_syntax):
        return False
    stored = UID(stored_syntax)
    if stored.is_compressed and not _decodable(stored):
        return False  # video, JPIP, or a codec that is not installed
    if not stored.is_little_endian:
        return False  # Explicit VR Big Endian (retired): byte-swapping OW data is not ours to do

    if target_syntax in UNCOMPRESSED_TARGETS:
        return True
    if target_syntax not in _ENCODER_LIMITS or info is None or not info.has_pixel_data:
        return False  # lossy targets, and a compressed label on an instance without pixels
    if stored.is_compressed and stored not in LOSSLESS_COMPRESSED:
        return False  # a lossy original is sent decompressed or as stored, never recompressed
    if target_syntax in DCMTK_JPEG and not dcmtk_jpeg_available():
        return False
    return _within_limits(target_syntax, info)


def _decodable(syntax: UID) -> bool:
    try:
        return get_decoder(syntax).is_available
    except NotImplementedError:
        return False


def _within_limits(target_syntax: str, info: PixelInfo) -> bool:
    low, high, photometrics = _ENCODER_LIMITS[target_syntax]
    return (
        info.bits_allocated in (8, 16)
        and info.bits_stored is not None
        and low <= info.bits_stored <= min(high, info.bits_allocated)
        and info.samples_per_pixel in (1, 3)
        and info.photometric in photometrics
    )


def transcode(source: str | os.PathLike | BinaryIO, target_syntax: str, out: BinaryIO) -> None:
    """Write the Part 10 instance ``source`` to ``out`` encoded in ``target_syntax``.

    Raises TranscodeError when ``can_produce`` says no, or a codec refuses the pixel data."""
    ds = dcmread(source)
    stored = UID(ds.file_meta.TransferSyntaxUID)
    if not can_produce(stored, target_syntax, PixelInfo.of(ds)):
        raise TranscodeError(f"cannot convert from {stored} to {target_syntax}")

    try:
        if "PixelData" in ds and stored.is_compressed:
            if stored not in LOSSLESS_COMPRESSED and "LossyImageCompression" not in ds:
                ds.LossyImageCompression = "01"
            ds = _decompressed(ds, stored)
        if target_syntax in PYDICOM_ENCODERS:
            ds.compress(target_syntax, generate_instance_uid=False)
        elif target_syntax in DCMTK_JPEG:
            _dcmtk_jpeg(ds, target_syntax, out)
            return
        else:
            ds.file_meta.TransferSyntaxUID = target_syntax
    except TranscodeError:
        raise
    except Exception as exc:  # a decoder or encoder refused the pixel data
        raise TranscodeError(f"cannot convert from {stored} to {target_syntax}: {exc}") from exc

    implicit = target_syntax == ImplicitVRLittleEndian
    ds.save_as(out, enforce_file_format=True, implicit_vr=implicit, little_endian=True)


def _decompressed(ds: Dataset, stored: UID) -> Dataset:
    """``ds`` with native pixel data in Explicit VR Little Endian, the same SOP Instance UID.

    pylibjpeg refuses some JPEG streams that dcmtk's decoder tolerates (e.g. the NIST DEPT042
    12-bit JPEG Extended image, whose scan header has sequential-mode values out of range);
    those are decoded by dcmdjpeg when it is installed."""
    try:
        ds.decompress(generate_instance_uid=False)
        return ds
    except Exception:
        if stored not in DCMTK_DECODES or shutil.which("dcmdjpeg") is None:
            raise
    with tempfile.TemporaryDirectory(prefix="transcode-") as folder:
        encoded, native = Path(folder) / "encoded.dcm", Path(folder) / "native.dcm"
        ds.save_as(encoded, enforce_file_format=True)
        command = ["dcmdjpeg", "+te", str(encoded), str(native)]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=300,
                                   check=False)
        if completed.returncode != 0:
            raise TranscodeError(f"dcmdjpeg failed ({completed.returncode}): {completed.stderr.strip()}")
        return dcmread(native)  # read whole (nothing deferred) before the folder goes


def _dcmtk_jpeg(ds: Dataset, target_syntax: str, out: BinaryIO) -> None:
    """JPEG Lossless through dcmcjpeg: it reads and writes files, so both go through a temp dir."""
    derivation = ds.get("DerivationDescription")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with tempfile.TemporaryDirectory(prefix="transcode-") as folder:
        native, encoded = Path(folder) / "native.dcm", Path(folder) / "encoded.dcm"
        ds.save_as(native, enforce_file_format=True, implicit_vr=False, little_endian=True)

        # +un: the output keeps the SOP Instance UID (lossless: the same instance).
        command = ["dcmcjpeg", DCMTK_JPEG[target_syntax], "+un", str(native), str(encoded)]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=300,
                                   check=False)
        if completed.returncode != 0:
            raise TranscodeError(f"dcmcjpeg failed ({completed.returncode}): {completed.stderr.strip()}")

        # dcmcjpeg notes the compression in Derivation Description; a lossless re-encoding
        # derives nothing, so the instance goes out with the attributes it was stored with.
        produced = dcmread(encoded)
        if derivation is None:
            produced.pop("DerivationDescription", None)
        else:
            produced.DerivationDescription = derivation
        produced.save_as(out, enforce_file_format=True)
