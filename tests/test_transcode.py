"""Transfer-syntax conversion on the NIST DEPT images: what can be produced, and that it is lossless.

Every produced file is read back by pydicom and, for JPEG Lossless, also decoded by dcmtk's
dcmdjpeg (an independent decoder); its pixels must equal those of the stored file and every
attribute outside the pixel data must be unchanged.
"""

from __future__ import annotations

import io
import subprocess

import numpy as np
import pydicom
import pytest

from dicom.transcode import (
    PixelInfo,
    TranscodeError,
    can_produce,
    choose_syntax,
    transcode,
)
from tests.conftest import CORPUS, NIST_IDS, require_tool

EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
RLE, JPEG_LS, J2K_LOSSLESS = "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"
JPEG_LOSSLESS_SV1, JPEG_LOSSLESS_14 = "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.57"
JPEG_BASELINE, JPEG_EXTENDED = "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"
LOSSLESS_TARGETS = [EXPLICIT, IMPLICIT, RLE, JPEG_LS, J2K_LOSSLESS, JPEG_LOSSLESS_SV1, JPEG_LOSSLESS_14]
MONO12 = PixelInfo(True, "MONOCHROME2", 16, 12, 1)


def first_image(study: str):
    return min((NIST_IDS / study / "images").iterdir())


def produce(source, target: str) -> bytes:
    out = io.BytesIO()
    transcode(source, target, out)
    return out.getvalue()


def assert_same_instance(produced: bytes, source, target: str) -> pydicom.Dataset:
    """``produced`` is the instance at ``source``, in ``target``, with the same pixels and attributes."""
    original, returned = pydicom.dcmread(source), pydicom.dcmread(io.BytesIO(produced))
    assert returned.file_meta.TransferSyntaxUID == target
    assert np.array_equal(returned.pixel_array, original.pixel_array)
    assert_same_attributes(original, returned)
    return returned


def unpadded(value):
    if isinstance(value, str):
        value = value.encode("latin-1")
    return value.rstrip(b"\0 ") if isinstance(value, bytes) else value


def assert_same_attributes(original: pydicom.Dataset, returned: pydicom.Dataset) -> None:
    """Every element but Pixel Data unchanged. Private elements are compared as stored bytes:
    Implicit VR drops their VR, and a reader's guess of it may not fit the value (DEPT024)."""

    def same(tag) -> bool:
        if tag not in returned:
            return False
        if tag.is_private and original.get_item(tag).VR != "SQ":
            # Implicit VR output of a private UN value whose VR pydicom knows rewrites its
            # padding (NUL -> space); padding is not part of a value.
            stored, sent = original.get_item(tag).value, returned.get_item(tag).value
            return unpadded(stored) == unpadded(sent)
        return original[tag].value == returned[tag].value

    # keys(), not iteration: iterating would convert (and so lose) the stored bytes.
    changed = [str(tag) for tag in original.keys() if tag != 0x7FE00010 and not same(tag)]  # noqa: SIM118
    added = [str(tag) for tag in returned.keys() if tag not in original]  # noqa: SIM118
    assert (changed, added) == ([], [])


# Which syntax is chosen ----------------------------------------------------------------------------

def test_the_stored_syntax_wins_wherever_it_is_listed():
    assert choose_syntax(EXPLICIT, [JPEG_LS, IMPLICIT, EXPLICIT], MONO12) == EXPLICIT
    assert choose_syntax(JPEG_EXTENDED, [EXPLICIT, JPEG_EXTENDED], None) == JPEG_EXTENDED


def test_otherwise_the_first_producible_syntax_in_the_consumers_order():
    assert choose_syntax(EXPLICIT, [JPEG_BASELINE, RLE, IMPLICIT], MONO12) == RLE
    assert choose_syntax(JPEG_LOSSLESS_SV1, [IMPLICIT, EXPLICIT], MONO12) == IMPLICIT


def test_nothing_lossy_is_ever_produced():
    for lossy in (JPEG_BASELINE, JPEG_EXTENDED, "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.91"):
        assert not can_produce(EXPLICIT, lossy, MONO12)
    # A lossy original may be decompressed, but is not recompressed as if it were an original.
    assert can_produce(JPEG_EXTENDED, EXPLICIT, MONO12)
    assert not can_produce(JPEG_EXTENDED, JPEG_LS, MONO12)


def test_unknown_and_unsupported_syntaxes_cannot_be_produced():
    assert not can_produce(EXPLICIT, "1.2.840.10008.1.2.1.999", MONO12)
    assert choose_syntax(EXPLICIT, ["1.2.840.10008.1.2.1.999", "not a uid"], MONO12) is None
    assert not can_produce("1.2.840.10008.1.2.4.100", EXPLICIT, MONO12)  # MPEG2 video: no decoder
    assert not can_produce(EXPLICIT, "1.2.840.10008.1.2.4.94", MONO12)  # JPIP referenced


def test_encoders_respect_the_pixel_data_they_get():
    assert not can_produce(EXPLICIT, JPEG_LS, PixelInfo(True, "MONOCHROME2", 32, 32, 1))
    assert not can_produce(EXPLICIT, J2K_LOSSLESS, PixelInfo(True, "YBR_FULL_422", 8, 8, 3))
    assert not can_produce(EXPLICIT, JPEG_LOSSLESS_SV1, PixelInfo(True, "RGB", 8, 8, 3))
    assert can_produce(EXPLICIT, RLE, PixelInfo(True, "RGB", 8, 8, 3))


def test_an_instance_without_pixel_data_only_changes_its_data_set_encoding():
    kos = CORPUS / "nist-IDS-DEPT002-a-kos.dcm"
    info = PixelInfo.read(kos)
    assert not info.has_pixel_data
    assert not can_produce(EXPLICIT, JPEG_LS, info) and not can_produce(EXPLICIT, RLE, info)
    returned = pydicom.dcmread(io.BytesIO(produce(kos, IMPLICIT)))
    assert returned.file_meta.TransferSyntaxUID == IMPLICIT
    assert returned.SOPInstanceUID == pydicom.dcmread(kos).SOPInstanceUID


def test_transcode_refuses_what_can_produce_refuses(tmp_path):
    with pytest.raises(TranscodeError):
        produce(first_image("IDS-DEPT002-a"), JPEG_BASELINE)


# Produced bytes are lossless ------------------------------------------------------------------------

@pytest.mark.parametrize("target", LOSSLESS_TARGETS)
@pytest.mark.parametrize("study", ["IDS-DEPT002-a", "IDS-DEPT022-a", "IDS-DEPT024-a"])
def test_native_images_are_transcoded_losslessly(study, target):
    """MR 12-bit, multi-frame US 8-bit, PET 16-bit: every lossless syntax, pixels equal."""
    source = first_image(study)
    assert can_produce(EXPLICIT, target, PixelInfo.read(source))
    assert_same_instance(produce(source, target), source, target)


@pytest.mark.parametrize("study", ["IDS-DEPT021-a", "IDS-DEPT041-a"])
@pytest.mark.parametrize("target", [EXPLICIT, IMPLICIT, JPEG_LS, RLE])
def test_jpeg_lossless_originals_are_decoded_or_reencoded_losslessly(study, target):
    """Multi-frame XA 8-bit and MR 12-bit stored as JPEG Lossless SV1."""
    source = first_image(study)
    assert_same_instance(produce(source, target), source, target)


def test_a_lossy_original_is_decompressed_and_keeps_its_lossy_flag():
    """DEPT042: 12-bit JPEG Extended that pylibjpeg refuses; dcmdjpeg decodes it."""
    require_tool("dcmdjpeg")
    source = first_image("IDS-DEPT042-a")
    original = pydicom.dcmread(source)
    returned = pydicom.dcmread(io.BytesIO(produce(source, EXPLICIT)))
    assert returned.file_meta.TransferSyntaxUID == EXPLICIT and returned.LossyImageCompression == "01"
    assert_same_attributes(original, returned)
    pixels = returned.pixel_array
    assert pixels.shape == (original.Rows, original.Columns) and 0 < pixels.max() < 1 << original.BitsStored
    with pytest.raises(TranscodeError):
        produce(source, JPEG_LS)


@pytest.mark.parametrize("target", [JPEG_LOSSLESS_SV1, JPEG_LOSSLESS_14])
def test_jpeg_lossless_output_decodes_with_dcmtk_to_the_same_pixels(tmp_path, target):
    dcmdjpeg = require_tool("dcmdjpeg")
    source = first_image("IDS-DEPT002-a")
    (tmp_path / "jpeg.dcm").write_bytes(produce(source, target))
    subprocess.run([dcmdjpeg, str(tmp_path / "jpeg.dcm"), str(tmp_path / "native.dcm")], check=True)
    decoded = pydicom.dcmread(tmp_path / "native.dcm")
    assert np.array_equal(decoded.pixel_array, pydicom.dcmread(source).pixel_array)
