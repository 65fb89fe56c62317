"""Rendered images for WADO-URI (PS3.18, RAD-55): one frame as JPEG or PNG.

A single-frame image is answered as ``image/jpeg`` when the request names no content type (the
WADO-URI default for single-frame images, PS3.18; other objects default to application/dicom),
so a browser or a simple viewer gets a picture.

The rendering follows the grayscale pipeline of PS3.3 C.11: the Modality LUT (Rescale Slope and
Intercept, or a Modality LUT Sequence), then the VOI LUT (the request's ``windowCenter`` and
``windowWidth``, else the image's first window, else its VOI LUT Sequence scaled by its own
output range, else the frame's own range end to end), the window by the image's VOI LUT Function
(LINEAR, LINEAR_EXACT, SIGMOID), then MONOCHROME1 inverted. An enhanced image's frame takes its
values from the Shared, then the Per-Frame Functional Groups. Color images are converted to
RGB (Palette Color through its LUTs, 8- or 16-bit entries as its descriptor says). Then
``region`` crops and ``rows``/``columns`` scale the result to fit, keeping its aspect ratio.
A display attribute that cannot be read (an empty or non-numeric window, say) is passed over.

Only the frame asked for is decoded (the first by default), and drawn in float32 (float64 for
data wider than 16 bits): memory follows one frame. Frames over MAX_INPUT_PIXELS are not drawn,
images over MAX_OUTPUT_PIXELS not made, and at most one drawing per core runs at once.
"""

from __future__ import annotations

import io
import math
import os
import threading
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array
from pydicom.uid import UID

RENDERED_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG"}
DEFAULT_QUALITY = 90  # JPEG quality (imageQuality, 1 to 100) when the request gives none
MAX_INPUT_PIXELS = 1 << 25  # a frame larger than this is not drawn: memory follows the frame
MAX_OUTPUT_PIXELS = 1 << 24  # nor is an image this large asked for (rows, columns)
JPEG_MAX_SIDE = 65500  # the longest side a baseline JPEG can have (Pillow's limit)
# Drawings at once: each may hold some 600 MB for the largest frame, and the web server's
# thread pool (40 threads) would otherwise let as many run.
_DRAWINGS = threading.BoundedSemaphore(max(2, os.cpu_count() or 2))


class RenderError(ValueError):
    """The request cannot be rendered: the reason names the parameter (HTTP 400)."""


class NotRenderable(Exception):
    """The object holds no image that can be drawn (HTTP 406 for a rendered type)."""


@dataclass
class RenderRequest:
    """The rendering parameters of a WADO-URI request, checked."""

    media_type: str = "image/jpeg"
    frame: int | None = None  # 1-based; None: not given (the first frame)
    window: tuple[float, float] | None = None  # (center, width)
    region: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2 in 0..1
    rows: int | None = None
    columns: int | None = None
    quality: int = DEFAULT_QUALITY

    @classmethod
    def from_query(cls, query, media_type: str) -> RenderRequest:
        request = cls(media_type=media_type)
        if "frameNumber" in query:
            request.frame = _integer(query, "frameNumber", 1)
        if ("windowCenter" in query) != ("windowWidth" in query):
            raise RenderError("windowCenter and windowWidth go together")
        if "windowCenter" in query:
            width = _number(query, "windowWidth")
            if width < 1:
                raise RenderError("windowWidth must be at least 1")
            request.window = (_number(query, "windowCenter"), width)
        if "region" in query:
            request.region = _region(query["region"])
        if "rows" in query:
            request.rows = _integer(query, "rows", 1)
        if "columns" in query:
            request.columns = _integer(query, "columns", 1)
        if "imageQuality" in query:
            request.quality = _integer(query, "imageQuality", 1, 100)
        return request


def is_image(header) -> bool:
    """Whether a data set (its header) describes an image that ``render`` can draw."""
    return "Rows" in header and "Columns" in header and "SamplesPerPixel" in header


def frame_count(header) -> int:
    try:
        return max(int(header.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError):
        return 1


def render(source: BinaryIO, request: RenderRequest) -> bytes:
    """One frame of the Part 10 file open in ``source``, rendered as ``request`` says."""
    try:
        header = dcmread(source, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds for broken data
        raise NotRenderable(f"the object cannot be read: {exc}") from exc
    if not is_image(header):
        raise NotRenderable("the object holds no image")
    frames = frame_count(header)
    if request.frame is not None and "NumberOfFrames" not in header:
        raise RenderError("frameNumber: the object is not a multi-frame image")
    if (request.frame or 1) > frames:
        raise RenderError(f"frameNumber {request.frame}: the image has {frames} frames")
    try:
        pixels = int(header.Rows) * int(header.Columns)
    except (TypeError, ValueError):
        raise NotRenderable("Rows and Columns do not say the image's size") from None
    if pixels > MAX_INPUT_PIXELS:
        raise NotRenderable(f"a frame of {header.Rows} x {header.Columns} pixels is not drawn")

    index = (request.frame or 1) - 1
    with _DRAWINGS:
        try:
            frame = _decode(source, header, index if frames > 1 else None)
            image = _draw(frame, _frame_attributes(header, index), request.window)
        except (RenderError, NotRenderable, MemoryError, KeyboardInterrupt, SystemExit,
                GeneratorExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - broken attributes, decoders (a Rust
            # decoder's panic is a BaseException): many kinds, none the server's fault
            raise NotRenderable(f"the image cannot be drawn: {exc}") from exc

    image = _fit(_crop(image, request.region), request.rows, request.columns)
    if request.media_type == "image/jpeg" and max(image.size) > JPEG_MAX_SIDE:
        raise RenderError(f"rows/columns: a JPEG side is at most {JPEG_MAX_SIDE} pixels")
    out = io.BytesIO()
    if request.media_type == "image/jpeg":
        image.save(out, "JPEG", quality=request.quality)
    else:
        image.save(out, RENDERED_TYPES[request.media_type])
    return out.getvalue()


def _decode(source: BinaryIO, header, index: int | None) -> np.ndarray:
    source.seek(0)
    syntax = getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not UID(syntax).is_deflated:
        try:
            return pixel_array(source, index=index)
        except MemoryError:
            raise
        except Exception:  # noqa: BLE001 - a deflated object, an odd offset table: read whole
            source.seek(0)
    return pixel_array(dcmread(source), index=index)


def _frame_attributes(header, index: int) -> Dataset:
    """The attributes that draw frame ``index``: the image's own, replaced by those of the
    Shared and then the Per-Frame Functional Groups of an enhanced image (PS3.3 C.7.6.16): a
    frame with a Pixel Value Transformation or a Frame VOI LUT takes all its modality or VOI
    values from there, none from the image's."""
    attributes = Dataset()
    # pydicom reads a LUT's OW data by the data set's encoding: the header's.
    attributes.file_meta = getattr(header, "file_meta", Dataset())
    attributes.set_original_encoding(*header.original_encoding, header.original_character_set)
    for keyword in _DRAWING_KEYWORDS:
        if keyword in header:
            attributes[keyword] = header[keyword]
    groups = []
    for sequence, item in (("SharedFunctionalGroupsSequence", 0),
                           ("PerFrameFunctionalGroupsSequence", index)):
        items = header.get(sequence) or []
        if item < len(items):
            groups.append(items[item])
    for group in groups:
        for macro, replaced in _MACROS.items():
            values = group.get(macro)
            if not values:
                continue
            for keyword in replaced:
                if keyword in attributes:
                    del attributes[keyword]
            for element in values[0]:
                if element.keyword in replaced:
                    attributes[element.keyword] = element
    return attributes


_MACROS = {  # functional group macro: the attributes it gives a frame
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept",
                                         "ModalityLUTSequence"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence"),
}
_DRAWING_KEYWORDS = ("PhotometricInterpretation", "BitsStored", "PixelRepresentation",
                     "RescaleSlope", "RescaleIntercept", "ModalityLUTSequence", "WindowCenter",
                     "WindowWidth", "VOILUTFunction", "VOILUTSequence",
                     "RedPaletteColorLookupTableDescriptor",
                     "GreenPaletteColorLookupTableDescriptor",
                     "BluePaletteColorLookupTableDescriptor",
                     "RedPaletteColorLookupTableData", "GreenPaletteColorLookupTableData",
                     "BluePaletteColorLookupTableData",
                     "SegmentedRedPaletteColorLookupTableData",
                     "SegmentedGreenPaletteColorLookupTableData",
                     "SegmentedBluePaletteColorLookupTableData")


def _draw(frame: np.ndarray, attributes: Dataset, window) -> Image.Image:
    photometric = attributes.get("PhotometricInterpretation")
    if frame.ndim == 2 and photometric in ("MONOCHROME1", "MONOCHROME2"):
        gray = _grayscale(frame, attributes, window)
        return Image.fromarray(255 - gray if photometric == "MONOCHROME1" else gray, mode="L")
    if window is not None:
        raise RenderError("windowCenter and windowWidth apply to grayscale images only")
    return Image.fromarray(_rgb(frame, attributes), mode="RGB")


def _grayscale(frame: np.ndarray, attributes: Dataset, window) -> np.ndarray:
    """PS3.3 C.11: Modality LUT, then VOI LUT or window, onto 0..255."""
    values = _modality(frame, attributes)
    function = str(attributes.get("VOILUTFunction") or "LINEAR").strip().upper()
    if window is None:
        center = _value(attributes.get("WindowCenter"))
        width = _value(attributes.get("WindowWidth"))
        if center is not None and width is not None and width > 0:
            window = (center, width)
        elif "VOILUTSequence" in attributes:
            lut = attributes.VOILUTSequence[0]
            bits = int(lut.LUTDescriptor[2])
            out = apply_voi_lut(values, attributes, prefer_lut=True)
            return _to_byte(out.astype(np.float64) / ((1 << bits) - 1) * 255)
    finite = np.isfinite(values)
    if not finite.all():  # NaN or infinity in float pixel data: drawn as the lowest value
        values = np.where(finite, values, values[finite].min() if finite.any() else 0)
    if window is None:  # the frame's own range, end to end
        low, high = float(values.min()), float(values.max())
        if high <= low:
            return np.zeros(values.shape, dtype=np.uint8)
        return _to_byte((values - low) / (high - low) * 255)
    return _window(values, *window, function)


def _modality(frame: np.ndarray, attributes: Dataset) -> np.ndarray:
    if "ModalityLUTSequence" in attributes:
        return apply_modality_lut(frame, attributes).astype(np.float64)
    # float32 holds every 16-bit value exactly; wider data keeps its precision in float64.
    values = frame.astype(np.float32 if frame.dtype.itemsize <= 2 else np.float64)
    slope = _value(attributes.get("RescaleSlope"))
    intercept = _value(attributes.get("RescaleIntercept"))
    if slope is not None and slope != 1:
        values *= slope
    if intercept:
        values += intercept
    return values


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """The VOI LUT Function onto 0..255 (PS3.3 C.11.2.1.2 and C.11.2.1.3)."""
    if function == "SIGMOID":
        return _to_byte(255 / (1 + np.exp(-4 * (values - center) / width)))
    if function == "LINEAR_EXACT":
        scaled = ((values - center) / width + 0.5) * 255
        low, high = center - width / 2, center + width / 2
    else:  # LINEAR; a width of 1 is a step at the center
        scaled = ((values - (center - 0.5)) / (width - 1 if width > 1 else 1) + 0.5) * 255
        low = center - 0.5 - (width - 1) / 2
        high = center - 0.5 + (width - 1) / 2
    scaled = np.where(values <= low, 0, np.where(values > high, 255, scaled))
    return _to_byte(scaled)


def _to_byte(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _rgb(frame: np.ndarray, attributes: Dataset) -> np.ndarray:
    if attributes.get("PhotometricInterpretation") == "PALETTE COLOR":
        # Entries of 8 or 16 bits (the descriptor's third value), whatever their storage.
        bits = int(attributes.RedPaletteColorLookupTableDescriptor[2])
        frame = apply_color_lut(frame, attributes)
    else:
        bits = int(attributes.get("BitsStored") or 8)
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise NotRenderable(f"photometric interpretation "
                            f"{attributes.get('PhotometricInterpretation')} is not drawn")
    if bits > 8:
        frame = frame.astype(np.uint32) >> (bits - 8)
    return np.ascontiguousarray(frame.astype(np.uint8))


def _value(value) -> float | None:
    """The first value of a DS/IS element as a finite number; None when absent or unusable."""
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _crop(image: Image.Image, region) -> Image.Image:
    if region is None:
        return image
    x1, y1, x2, y2 = region
    width, height = image.size
    box = (round(x1 * width), round(y1 * height), round(x2 * width), round(y2 * height))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise RenderError("region is smaller than one pixel")
    return image.crop(box)


def _fit(image: Image.Image, rows: int | None, columns: int | None) -> Image.Image:
    """Scaled to fit within rows x columns (either alone scales by it), aspect kept."""
    if rows is None and columns is None:
        return image
    width, height = image.size
    scale = min(columns / width if columns else float("inf"),
                rows / height if rows else float("inf"))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size[0] * size[1] > MAX_OUTPUT_PIXELS:  # rows=60000 alone would scale a CT to 14 GB
        raise RenderError("rows/columns: the image would be too large")
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def _number(query, name: str) -> float:
    try:
        value = float(query[name])
    except ValueError:
        raise RenderError(f"{name} must be a number") from None
    if not math.isfinite(value):
        raise RenderError(f"{name} must be a number")
    return value


def _integer(query, name: str, low: int, high: int | None = None) -> int:
    text = query[name].strip()
    if not text.isascii() or not text.lstrip("+-").isdigit() or len(text) > 9:
        raise RenderError(f"{name} must be an integer of at most 9 digits")
    value = int(text)
    if value < low or (high is not None and value > high):
        raise RenderError(f"{name} must be between {low} and {high}" if high is not None
                          else f"{name} must be at least {low}")
    return value


def _region(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise RenderError("region must be four numbers: x1,y1,x2,y2") from None
    if len(values) != 4 or not all(0.0 <= value <= 1.0 for value in values):
        raise RenderError("region must be four numbers from 0.0 to 1.0: x1,y1,x2,y2")
    x1, y1, x2, y2 = values
    if x1 >= x2 or y1 >= y2:
        raise RenderError("region must have x1 < x2 and y1 < y2")
    return values
