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
    return with_meta(ds)


def with_meta(ds: Dataset) -> BytesIO:
    """``ds`` as a Part 10 file (Explicit VR Little Endian) in memory."""
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
    with pytest.raises(NotRenderable):
        render(with_meta(ds), RenderRequest())


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


def _dataset_of(source: BytesIO):
    from pydicom import dcmread

    source.seek(0)
    return dcmread(source)


def _saved(ds) -> BytesIO:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    out.seek(0)
    return out


def test_a_window_of_width_1_is_a_step_and_the_frames_range_spans_0_to_255():
    mask = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    assert drawn(part10(mask), window=(0.5, 1)).tolist() == [[0, 255], [255, 0]]
    levels = np.array([[0, 10], [20, 30]], dtype=np.uint16)
    assert drawn(part10(levels)).tolist() == [[0, 85], [170, 255]]


@pytest.mark.parametrize("function", ["SIGMOID", "LINEAR_EXACT"])
def test_the_voi_lut_function_is_applied(function):
    stored = np.array([[1000, 1750], [2000, 2600]], dtype=np.uint16)
    source = part10(stored, WindowCenter=2000, WindowWidth=1000, VOILUTFunction=function)
    c, w = 2000.0, 1000.0

    def reference(x: float) -> int:  # PS3.3 C.11.2.1.3.1 and C.11.2.1.3.2
        if function == "SIGMOID":
            return int(np.rint(255 / (1 + np.exp(-4 * (x - c) / w))))
        if x <= c - w / 2:
            return 0
        return 255 if x > c + w / 2 else int(np.rint(((x - c) / w + 0.5) * 255))

    assert drawn(source).tolist() == [[reference(v) for v in row] for row in stored.tolist()]


def test_a_voi_lut_is_scaled_by_its_own_output_range():
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    stored = np.array([[0, 1], [2, 3]], dtype=np.uint16)
    ds = _dataset_of(part10(stored))
    lut = Dataset()
    lut.LUTDescriptor = [4, 0, 12]  # 12-bit output
    lut.add_new(0x00283006, "US", [0, 341, 682, 1023])  # LUT Data
    ds.VOILUTSequence = Sequence([lut])
    assert drawn(_saved(ds)).tolist() == [[0, 21], [42, 64]]  # 1023 of 4095 is a quarter


def test_unusable_display_attributes_are_passed_over_or_refused():
    stored = np.array([[0, 10], [20, 30]], dtype=np.uint16)
    ds = _dataset_of(part10(stored))
    ds.add_new(0x00281050, "DS", "987")  # Window Center, made "abc" below
    ds.add_new(0x00281051, "DS", "100")
    ds.add_new(0x00281053, "DS", "")  # Rescale Slope, empty
    broken = BytesIO(_saved(ds).getvalue().replace(b"987 ", b"abc "))
    assert drawn(broken).tolist() == [[0, 85], [170, 255]]  # the frame's own range

    palette = _dataset_of(part10(stored.astype(np.uint8), "PALETTE COLOR"))
    with pytest.raises(NotRenderable):  # no lookup tables at all
        render(_saved(palette), RenderRequest())


def test_a_palette_of_8_bit_entries_in_16_bit_words_keeps_its_values():
    from pydicom import DataElement

    indexes = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    ds = _dataset_of(part10(indexes, "PALETTE COLOR"))
    entries = {"Red": 255, "Green": 0, "Blue": 200}
    for number, (color, value) in enumerate(entries.items()):
        ds.add_new(0x00281101 + number, "US", [256, 0, 8])  # the color's LUT descriptor
        table = np.zeros(256, dtype=np.uint16)
        table[1] = value
        ds[f"{color}PaletteColorLookupTableData"] = DataElement(
            f"{color}PaletteColorLookupTableData", "OW", table.tobytes())
    rgb = drawn(_saved(ds))
    assert rgb[0, 1].tolist() == [255, 0, 200] and rgb[0, 0].tolist() == [0, 0, 0]


def test_an_enhanced_images_frame_takes_its_functional_groups():
    """Rescale from the Shared group, window from the Per-Frame group of the frame drawn."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    frames = np.array([[[0, 1024], [1064, 2048]], [[0, 1024], [1064, 2048]]], dtype=np.uint16)
    ds = _dataset_of(part10(frames[0]))
    ds.NumberOfFrames = 2
    ds.PixelData = frames.tobytes()
    transformation = Dataset()
    transformation.RescaleSlope, transformation.RescaleIntercept = 1, -1024
    shared = Dataset()
    shared.PixelValueTransformationSequence = Sequence([transformation])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for center, width in ((0, 100), (40, 2000)):
        window = Dataset()
        window.WindowCenter, window.WindowWidth = center, width
        item = Dataset()
        item.FrameVOILUTSequence = Sequence([window])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    source = _saved(ds)
    for frame, (center, width) in ((1, (0, 100)), (2, (40, 2000))):
        source.seek(0)
        expected = [[linear(v - 1024, center, width) for v in row]
                    for row in frames[frame - 1].tolist()]
        assert drawn(source, frame=frame).tolist() == expected


def test_a_deflated_image_is_drawn():
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = _dataset_of(part10(np.array([[0, 10], [20, 30]], dtype=np.uint16)))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    assert drawn(_saved(ds)).tolist() == [[0, 85], [170, 255]]


def test_sizes_beyond_the_limits_are_refused():
    from dicom import render as module

    source = part10(np.zeros((512, 1), dtype=np.uint8))
    with pytest.raises(RenderError, match="JPEG side"):
        render(source, RenderRequest(rows=65536))  # 128 x 65536: few pixels, too tall
    source.seek(0)
    ds = _dataset_of(source)
    ds.Rows, ds.Columns = 8192, 8192  # declared only: refused before any decoding
    with pytest.raises(NotRenderable, match="8192 x 8192"):
        render(_saved(ds), RenderRequest())
    assert module.MAX_INPUT_PIXELS < 8192 * 8192


def test_lookup_tables_read_as_ow_in_implicit_vr_are_drawn():
    """Implicit VR gives a LUT's data back as OW: read with the header's own encoding."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ImplicitVRLittleEndian

    stored = np.array([[0, 1], [2, 3]], dtype=np.uint16)
    ds = _dataset_of(part10(stored))
    lut = Dataset()
    lut.LUTDescriptor = [4, 0, 12]
    lut.add_new(0x00283006, "US", [0, 341, 682, 1023])
    ds.VOILUTSequence = Sequence([lut])
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    assert drawn(_saved(ds)).tolist() == [[0, 21], [42, 64]]


def test_wide_values_keep_their_precision_and_non_finite_ones_are_passed_over():
    wide = (np.arange(16, dtype=np.uint32) * 16 + 1_000_000_000).reshape(4, 4)
    gray = drawn(part10(wide), window=(1_000_000_128.0, 256.0))
    assert len(np.unique(gray)) == 16  # float32 would merge neighbouring values

    floats = np.array([[0.0, 0.5], [1.0, np.nan]], dtype=np.float32)
    ds = _dataset_of(part10(np.zeros((2, 2), dtype=np.uint16)))
    del ds.PixelData
    ds.BitsAllocated, ds.BitsStored = 32, 32
    del ds.HighBit, ds.PixelRepresentation
    ds.FloatPixelData = floats.tobytes()
    gray = drawn(_saved(ds))
    assert gray[0].tolist() == [0, 128] and gray[1, 0] == 255


def test_a_window_between_1_and_2_wide_divides_by_its_width_less_1():
    stored = np.array([[0, 1], [2, 3]], dtype=np.uint16)
    source = part10(stored, RescaleSlope=0.25, RescaleIntercept=0)  # 0, 0.25, 0.5, 0.75
    expected = [[linear(v * 0.25, 0.5, 1.5) for v in row] for row in stored.tolist()]
    got = drawn(source, window=(0.5, 1.5)).tolist()
    assert np.abs(np.array(got) - np.array(expected)).max() <= 1


def test_frame_number_1_of_an_enhanced_image_of_one_frame_is_drawn():
    ds = _dataset_of(part10(np.array([[0, 10], [20, 30]], dtype=np.uint16)))
    ds.NumberOfFrames = 1
    assert drawn(_saved(ds), frame=1).tolist() == [[0, 85], [170, 255]]


def test_a_frames_voi_lut_replaces_the_images_window():
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    stored = np.array([[0, 10], [20, 30]], dtype=np.uint16)
    ds = _dataset_of(part10(stored, WindowCenter=0, WindowWidth=1))  # all white or black
    ds.NumberOfFrames = 1
    window = Dataset()
    window.WindowCenter, window.WindowWidth = 15, 31
    frame = Dataset()
    frame.FrameVOILUTSequence = Sequence([window])
    ds.PerFrameFunctionalGroupsSequence = Sequence([frame])
    expected = [[linear(v, 15, 31) for v in row] for row in stored.tolist()]
    assert drawn(_saved(ds)).tolist() == expected


def test_integers_longer_than_9_digits_are_refused():
    with pytest.raises(RenderError, match="rows"):
        RenderRequest.from_query({"rows": "9" * 400}, "image/png")
