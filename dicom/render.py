"""Rendered images for WADO-URI (PS3.18, RAD-55): one frame as JPEG or PNG.

A single-frame image is answered as ``image/jpeg`` when the request names no content type (the
WADO-URI default for single-frame images, PS3.18; other objects default to application/dicom),
so a browser or a simple viewer gets a picture.

The rendering follows the grayscale pipeline of PS3.3 C.11: the Modality LUT (Rescale Slope and
Intercept, or a Modality LUT Sequence), then the VOI window (the request's ``windowCenter`` and
``windowWidth``, else the image's first window or VOI LUT, else the frame's own range), then
MONOCHROME1 inverted. Color images are converted to RGB (Palette Color through its LUTs). Then
``region`` crops and ``rows``/``columns`` scale the result to fit, keeping its aspect ratio.

Only the frame asked for is decoded (the first by default): memory follows one frame, not the
whole object.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

RENDERED_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG"}
DEFAULT_QUALITY = 90  # JPEG quality (imageQuality, 1 to 100) when the request gives none
MAX_OUTPUT_PIXELS = 1 << 26  # pixels of a drawn image: beyond this, a request is refused


class RenderError(ValueError):
    """The request cannot be rendered: the reason names the parameter (HTTP 400)."""


class NotRenderable(Exception):
    """The object holds no image to render (HTTP 406 for a rendered type)."""


@dataclass
class RenderRequest:
    """The rendering parameters of a WADO-URI request, checked."""

    media_type: str = "image/jpeg"
    frame: int = 1
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
        if (request.rows or 1) * (request.columns or 1) > MAX_OUTPUT_PIXELS:
            raise RenderError("rows x columns is too large")
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
    if request.frame > frames:
        raise RenderError(f"frameNumber {request.frame}: the image has {frames} frame(s)")
    source.seek(0)
    try:
        frame = pixel_array(source, index=request.frame - 1 if frames > 1 else None)
    except Exception as exc:  # noqa: BLE001 - the decoders raise many kinds
        raise NotRenderable(f"the image cannot be decoded: {exc}") from exc

    if int(header.SamplesPerPixel) == 1 and header.get("PhotometricInterpretation") in (
            "MONOCHROME1", "MONOCHROME2"):
        image = Image.fromarray(_grayscale(frame, header, request.window), mode="L")
    elif request.window is not None:
        raise RenderError("windowCenter and windowWidth apply to grayscale images only")
    else:
        image = Image.fromarray(_rgb(frame, header), mode="RGB")

    image = _fit(_crop(image, request.region), request.rows, request.columns)
    out = io.BytesIO()
    if request.media_type == "image/jpeg":
        image.save(out, "JPEG", quality=request.quality)
    else:
        image.save(out, RENDERED_TYPES[request.media_type])
    return out.getvalue()


def _grayscale(frame: np.ndarray, header, window: tuple[float, float] | None) -> np.ndarray:
    values = apply_modality_lut(frame, header).astype(np.float64)
    if window is None and "VOILUTSequence" in header and "WindowCenter" not in header:
        values = apply_voi_lut(values, header, prefer_lut=True).astype(np.float64)
    if window is None and "WindowCenter" in header and "WindowWidth" in header:
        window = (_first(header.WindowCenter), _first(header.WindowWidth))
    if window is None or window[1] < 1:
        low, high = float(values.min()), float(values.max())
        window = ((low + high) / 2, max(high - low, 1.0))
    center, width = window
    # PS3.3 C.11.2.1.2.1, the linear function, onto 0..255.
    scaled = ((values - (center - 0.5)) / (width - 1 if width > 1 else 1) + 0.5) * 255
    gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if header.PhotometricInterpretation == "MONOCHROME1":
        gray = 255 - gray
    return gray


def _rgb(frame: np.ndarray, header) -> np.ndarray:
    if header.get("PhotometricInterpretation") == "PALETTE COLOR":
        frame = apply_color_lut(frame, header)
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise NotRenderable(f"photometric interpretation {header.get('PhotometricInterpretation')} "
                            "is not rendered")
    if frame.dtype != np.uint8:  # 16-bit color (a palette's LUT entries): top 8 bits
        bits = 16 if header.get("PhotometricInterpretation") == "PALETTE COLOR" \
            else int(header.BitsStored)
        frame = (frame.astype(np.uint32) >> max(bits - 8, 0)).astype(np.uint8)
    return np.ascontiguousarray(frame)


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


def _first(value) -> float:
    try:
        return float(value[0])
    except TypeError:  # a single value
        return float(value)


def _number(query, name: str) -> float:
    try:
        value = float(query[name])
    except ValueError:
        raise RenderError(f"{name} must be a number") from None
    if not np.isfinite(value):
        raise RenderError(f"{name} must be a number")
    return value


def _integer(query, name: str, low: int, high: int | None = None) -> int:
    try:
        value = int(query[name])
    except ValueError:
        raise RenderError(f"{name} must be an integer") from None
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
