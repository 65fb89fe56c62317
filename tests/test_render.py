"""WADO-URI rendering (``dicom.render``): the grayscale pipeline of PS3.3 C.11 checked value by
value on small synthetic images, drawn as PNG (lossless) and read back with Pillow."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from dicom.render import NotRenderable, RenderError, RenderRequest, render


def part10(pixels: np.ndarray, photometric: str = "MONOCHROME2", **attributes) -> BytesIO:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    for name, value in attributes.items():
        setattr(ds, name, value)
    ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    out.seek(0)
    return out


def drawn(source: BytesIO, **request) -> np.ndarray:
    image = Image.open(BytesIO(render(source, RenderRequest(media_type="image/png", **request))))
    return np.asarray(image)


def linear(x: float, center: float, width: float) -> int:
    """PS3.3 C.11.2.1.2.1 onto 0..255, as an independent reference."""
    if x <= center - 0.5 - (width - 1) / 2:
        return 0
    if x > center - 0.5 + (width - 1) / 2:
        return 255
    return int(np.rint(((x - (center - 0.5)) / (width - 1) + 0.5) * 255))


def test_rescale_then_the_images_window():
    stored = np.array([[0, 1000], [1024, 3000]], dtype=np.uint16)
    source = part10(stored, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40,
                    WindowWidth=400)
    expected = [[linear(v - 1024, 40, 400) for v in row] for row in stored.tolist()]
    assert drawn(source).tolist() == expected


def test_the_requests_window_wins_and_monochrome1_is_inverted():
    stored = np.array([[10, 20], [30, 40]], dtype=np.uint16)
    source = part10(stored, "MONOCHROME1", WindowCenter=25, WindowWidth=10)
    expected = [[255 - linear(v, 20, 21) for v in row] for row in stored.tolist()]
    assert drawn(source, window=(20, 21)).tolist() == expected


def test_without_a_window_the_frames_own_range_is_used():
    stored = np.array([[-100, 0], [50, 100]], dtype=np.int16)
    gray = drawn(part10(stored))
    assert gray.min() == 0 and gray.max() == 255
    assert gray[0, 0] < gray[0, 1] < gray[1, 0] < gray[1, 1]


def test_color_is_drawn_as_it_is_stored():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    assert drawn(part10(rgb, "RGB")).tolist() == rgb.tolist()
    with pytest.raises(RenderError, match="grayscale"):
        drawn(part10(rgb, "RGB"), window=(100, 50))


def test_an_object_without_an_image_is_not_rendered():
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.59", generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    out.seek(0)
    with pytest.raises(NotRenderable):
        render(out, RenderRequest())


def test_jpeg_quality_is_the_requests():
    pixels = (np.random.default_rng(1).random((64, 64)) * 4095).astype(np.uint16)
    sizes = []
    for quality in (10, 95):
        source = part10(pixels)
        sizes.append(len(render(source, RenderRequest(quality=quality))))
    assert sizes[0] < sizes[1]


def test_a_size_that_would_exhaust_memory_is_refused():
    source = part10(np.zeros((4, 4), dtype=np.uint16))
    with pytest.raises(RenderError, match="too large"):
        render(source, RenderRequest(rows=60000))  # 60000 x 60000 pixels
    source.seek(0)
    assert len(render(source, RenderRequest(rows=400))) > 0
