"""WADO-RS (RAD-107, DICOM PS3.18 10.4) and WADO-URI (RAD-55, PS3.18 9) for the archive.

Every KOS manifest names, per series, a Retrieve URL of the form
``<base>/wado-rs/studies/<study>/series/<series>``; these routes answer it.

- ``GET /wado-rs/studies/{study}[/series/{series}[/instances/{instance}]]`` answers
  ``multipart/related; type="application/dicom"``, one part per instance, each part the stored
  Part 10 file streamed from the blob store (a response never holds more than one read chunk).
- ``.../metadata`` at each of those levels answers ``application/dicom+json``: one JSON object
  per instance, without Pixel Data and without other large binary values (no bulk data URIs).
- ``GET /wado?requestType=WADO&studyUID=..&seriesUID=..&objectUID=..&contentType=application/dicom``
  answers the stored instance; ``contentType=image/jpeg`` or ``image/png`` a frame of it drawn
  (``dicom.render``), which is also the answer for a single-frame image when no contentType is
  given (PS3.18's default).

No transcoding happens here: the stored transfer syntax is served when the client accepts it
(``transfer-syntax=*``, the stored UID, or no transfer-syntax parameter at all); otherwise 406.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from dicom import render

log = logging.getLogger(__name__)

CHUNK = 1 << 20

# Values longer than this, in these VRs, are left out of the metadata (PS3.18 allows either
# inline or a BulkDataURI; we offer neither, so the JSON stays small).
BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
BULK_THRESHOLD = 1024
PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"

# WADO-URI parameters (PS3.18) for rendered images only, and those this server does not
# honour: refused by name rather than ignored (an anonymize ignored would hand out identities).
RENDERING_PARAMETERS = {"frameNumber", "windowCenter", "windowWidth", "region", "rows",
                        "columns", "imageQuality"}
UNSUPPORTED_URI_PARAMETERS = {"anonymize", "annotation", "presentationUID",
                              "presentationSeriesUID", "charset"}

# A DICOM UID (PS3.5 9.1): digits and dots, at most 64 characters.
UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class NotAcceptable(Exception):
    """The client accepts no representation this server can produce (HTTP 406)."""


class NotFound(Exception):
    """No such study, series or instance, or the instance is not under the named parents."""


# -- Accept negotiation ----------------------------------------------------------------------


@dataclass
class MediaRange:
    """One entry of an Accept header: ``type/subtype`` with its parameters (lowercased names)."""

    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0


def parse_accept(header: str | None, keep_refused: bool = False) -> list[MediaRange]:
    """The media ranges of an Accept header, best first; ``*/*`` when there is no header.
    Ranges weighted 0 (refusals, RFC 9110 12.5.1) are dropped unless ``keep_refused``."""
    if not header or not header.strip():
        return [MediaRange("*/*")]

    ranges = []
    for item in _split_outside_quotes(header, ","):
        pieces = _split_outside_quotes(item, ";")
        media_type = pieces[0].strip().lower()
        if not media_type:
            continue
        params: dict[str, str] = {}
        for piece in pieces[1:]:
            name, _, value = piece.partition("=")
            params[name.strip().lower()] = value.strip().strip('"')
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        if q > 0 or keep_refused:
            ranges.append(MediaRange(media_type, params, q))

    # Stable sort: equal weights keep the client's order.
    return sorted(ranges, key=lambda r: -r.q)


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


@dataclass
class InstancePlan:
    """How one retrieve answers: multipart or a single body, and the syntaxes allowed."""

    multipart: bool
    # None: any stored transfer syntax; otherwise the set the client named.
    transfer_syntaxes: set[str] | None


def negotiate_instances(accept: str | None, single_instance: bool) -> list[InstancePlan]:
    """The acceptable answers to a retrieve of instances, best first (PS3.18 8.7).

    ``multipart/related; type="application/dicom"`` is the answer of the standard; a bare
    ``application/dicom`` is honoured only for one instance, since it cannot hold several."""
    plans = []
    for media in parse_accept(accept):
        syntax = media.params.get("transfer-syntax")
        syntaxes = None if syntax in (None, "", "*") else {syntax}

        if media.media_type in ("*/*", "multipart/*"):
            plans.append(InstancePlan(True, None))
        elif media.media_type == "multipart/related":
            if media.params.get("type", DICOM).lower() in (DICOM, "*/*", "application/*"):
                plans.append(InstancePlan(True, syntaxes))
        elif media.media_type in (DICOM, "application/*") and single_instance:
            plans.append(InstancePlan(False, syntaxes))
    return plans


def choose_plan(plans: list[InstancePlan], stored_syntaxes: set[str]) -> InstancePlan:
    """The first plan that every stored transfer syntax satisfies, or NotAcceptable."""
    for plan in plans:
        if plan.transfer_syntaxes is None or stored_syntaxes <= plan.transfer_syntaxes:
            return plan
    raise NotAcceptable("none of the accepted media types or transfer syntaxes can be produced "
                        "(stored: " + ", ".join(sorted(stored_syntaxes)) + ")")


def accepts_json(accept: str | None) -> bool:
    for media in parse_accept(accept):
        if media.media_type in ("*/*", "application/*", DICOM_JSON, "application/json"):
            return True
    return False


# -- Finding what was asked for --------------------------------------------------------------


def select_instances(archive, study_uid: str, series_uid: str | None = None,
                     sop_uid: str | None = None) -> list:
    """The index records the path names, in archive order; NotFound when a level is unknown
    or an instance is not under the series and study named in the path."""
    if archive.study(study_uid) is None:
        raise NotFound(f"unknown study {study_uid}")

    records = list(archive.instances_of(study_uid, series_uid))
    if series_uid is not None and not records:
        raise NotFound(f"no series {series_uid} in study {study_uid}")

    if sop_uid is not None:
        records = [r for r in records if r.sop_instance_uid == sop_uid]
        if not records:
            raise NotFound(f"no instance {sop_uid} in series {series_uid} of study {study_uid}")
    return records


def iter_instance_bytes(archive, record) -> Iterator[bytes]:
    """The stored Part 10 file of one instance, chunk by chunk."""
    with archive.open_instance(record.sop_instance_uid) as f:
        yield from iter(lambda: f.read(CHUNK), b"")


def multipart_body(archive, records: Iterable, boundary: str) -> Iterator[bytes]:
    """multipart/related body (RFC 2387): one application/dicom part per instance."""
    for record in records:
        yield (f"--{boundary}\r\nContent-Type: {DICOM}; "
               f"transfer-syntax={record.transfer_syntax_uid}\r\n"
               f"Content-Length: {record.size}\r\n\r\n").encode("ascii")
        yield from iter_instance_bytes(archive, record)
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")


# -- Metadata ---------------------------------------------------------------------------------


def instance_metadata(archive, record) -> dict[str, Any]:
    """The DICOM JSON model (PS3.18 F.2) of one instance, without pixel or other bulk data."""
    with archive.open_instance(record.sop_instance_uid) as f:
        dataset = dcmread(f, stop_before_pixels=True)
    _drop_bulk_data(dataset)
    return dataset.to_json_dict(suppress_invalid_tags=True)


def _drop_bulk_data(dataset: Dataset) -> None:
    for element in list(dataset):
        if element.tag in PIXEL_TAGS:
            del dataset[element.tag]
        elif element.VR == "SQ":
            for item in element.value:
                _drop_bulk_data(item)
        elif element.VR in BULK_VRS and element.value is not None \
                and len(element.value) > BULK_THRESHOLD:
            del dataset[element.tag]


def metadata_body(archive, records: Iterable) -> Iterator[bytes]:
    """A JSON array of instance objects, written one instance at a time."""
    yield b"["
    for index, record in enumerate(records):
        if index:
            yield b","
        yield json.dumps(instance_metadata(archive, record)).encode("utf-8")
    yield b"]"


# -- WADO-RS endpoints -------------------------------------------------------------------------


def _path_uids(request: Request) -> tuple[str, str | None, str | None]:
    params = request.path_params
    return params["study"], params.get("series"), params.get("instance")


def _retrieve_endpoint(archive):
    async def retrieve(request: Request) -> Response:
        study_uid, series_uid, sop_uid = _path_uids(request)
        try:
            records = await run_in_threadpool(select_instances, archive, study_uid, series_uid,
                                              sop_uid)
            plans = negotiate_instances(request.headers.get("accept"), sop_uid is not None)
            plan = choose_plan(plans, {r.transfer_syntax_uid for r in records})
        except NotFound as exc:
            return PlainTextResponse(str(exc), status_code=404)
        except NotAcceptable as exc:
            return PlainTextResponse(str(exc), status_code=406)

        log.info("WADO-RS retrieve study %s series %s instance %s: %d instance(s)",
                 study_uid, series_uid or "*", sop_uid or "*", len(records))
        if not plan.multipart:
            record = records[0]
            return StreamingResponse(
                iter_instance_bytes(archive, record),
                media_type=f"{DICOM}; transfer-syntax={record.transfer_syntax_uid}",
                headers={"Content-Length": str(record.size)},
            )

        boundary = secrets.token_hex(16)
        return StreamingResponse(
            multipart_body(archive, records, boundary),
            media_type=f'multipart/related; type="{DICOM}"; boundary={boundary}',
        )

    return retrieve


def _metadata_endpoint(archive):
    async def metadata(request: Request) -> Response:
        study_uid, series_uid, sop_uid = _path_uids(request)
        if not accepts_json(request.headers.get("accept")):
            return PlainTextResponse(f"metadata is available as {DICOM_JSON} only", 406)
        try:
            records = await run_in_threadpool(select_instances, archive, study_uid, series_uid,
                                              sop_uid)
        except NotFound as exc:
            return PlainTextResponse(str(exc), status_code=404)
        return StreamingResponse(metadata_body(archive, records), media_type=DICOM_JSON)

    return metadata


# -- WADO-URI endpoint -------------------------------------------------------------------------


def _wado_uri_endpoint(archive):
    async def wado(request: Request) -> Response:
        query = request.query_params

        # Guards, in the order of PS3.18 9.4: request type, then the three UIDs.
        if query.get("requestType") != "WADO":
            return PlainTextResponse("requestType must be WADO", status_code=400)
        missing = [name for name in ("studyUID", "seriesUID", "objectUID") if name not in query]
        if missing:
            return PlainTextResponse("missing parameter(s): " + ", ".join(missing), 400)
        uids = {name: query[name].strip() for name in ("studyUID", "seriesUID", "objectUID")}
        malformed = [name for name, value in uids.items() if value and not _is_uid(value)]
        if malformed:
            return PlainTextResponse("not a DICOM UID: " + ", ".join(malformed), 400)

        # An empty UID names nothing we hold: NIST ids_4810 cases 4-6 expect 404 here.
        if not all(uids.values()):
            return PlainTextResponse("empty UID parameter: no such object", status_code=404)

        repeated = sorted(name for name in query if len(query.getlist(name)) > 1)
        if repeated:
            return PlainTextResponse("given more than once: " + ", ".join(repeated), 400)
        unsupported = sorted(set(query) & UNSUPPORTED_URI_PARAMETERS)
        if unsupported:
            return PlainTextResponse("not supported: " + ", ".join(unsupported), 400)
        try:
            media_type = _requested_type(query.get("contentType"))
        except NotAcceptable as exc:
            return PlainTextResponse(str(exc), 406)
        except ValueError as exc:
            return PlainTextResponse(str(exc), 400)

        try:
            records = await run_in_threadpool(select_instances, archive, uids["studyUID"],
                                              uids["seriesUID"], uids["objectUID"])
        except NotFound as exc:
            return PlainTextResponse(str(exc), status_code=404)
        record = records[0]

        headers = {"Content-Length": str(record.size)}
        if media_type is None:  # the server's choice: PS3.18's default, as Accept allows
            headers["Vary"] = "Accept"
            header = await run_in_threadpool(archive.header, record.sop_instance_uid)
            choices = _default_types(header, query, request.headers.get("accept"))
            if not choices:
                return _vary(PlainTextResponse("Accept: the object is available as " + ", ".join(
                    _offered_types(header, query)), 406))
            media_type = choices[0]
            if media_type != DICOM:
                response = await _rendered(archive, record, query, media_type)
                if response.status_code != 406 or DICOM not in choices or \
                        set(query) & RENDERING_PARAMETERS:
                    return _vary(response)
                media_type = DICOM  # an image that cannot be drawn: the object itself
        elif media_type != DICOM:
            return await _rendered(archive, record, query, media_type)

        rendering = sorted(set(query) & RENDERING_PARAMETERS)
        if rendering:
            return PlainTextResponse(", ".join(rendering) + f": for rendered images only, "
                                     f"not {DICOM}", 400)
        syntax = query.get("transferSyntax")
        if syntax and syntax != record.transfer_syntax_uid:
            return PlainTextResponse(f"the object is stored as {record.transfer_syntax_uid} "
                                     "and is not transcoded", status_code=406)

        log.info("WADO-URI retrieve instance %s", record.sop_instance_uid)
        return StreamingResponse(iter_instance_bytes(archive, record), media_type=DICOM,
                                 headers=headers)

    return wado


def _requested_type(content_type: str | None) -> str | None:
    """The media type a contentType parameter asks for (its best weighted type this server
    has); None when it leaves the choice to the server. NotAcceptable when it names none of
    ours; ValueError when it mixes application/dicom with other types (PS3.18)."""
    if content_type is None or not content_type.strip():
        return None
    ranges = parse_accept(content_type)
    names = {r.media_type for r in ranges} - {"*/*"}
    if DICOM in names and len(names) > 1:
        raise ValueError(f"contentType: {DICOM} and other types cannot be mixed")
    for media_range in ranges:
        if media_range.media_type in (DICOM, *render.RENDERED_TYPES):
            return media_range.media_type
        if media_range.media_type == "*/*":
            return None
    raise NotAcceptable("contentType: available are " + ", ".join((DICOM,
                                                                   *render.RENDERED_TYPES)))


def _offered_types(header, query) -> list[str]:
    """What a request without contentType may get, the server's preference first: a
    single-frame image, or one frame asked for by number, drawn (JPEG first, PS3.18's default),
    else the object; the object alone when a transfer syntax is named."""
    drawable = render.is_image(header) and "transferSyntax" not in query and (
        "NumberOfFrames" not in header or render.frame_count(header) == 1
        or "frameNumber" in query)
    return [*render.RENDERED_TYPES, DICOM] if drawable else [DICOM]


def _default_types(header, query, accept: str | None) -> list[str]:
    """The offered types the Accept header allows, its best weighted first (the server's
    preference among equals); a weight of 0 refuses a type (RFC 9110 12.5.1)."""
    weights = {}
    for name in _offered_types(header, query):
        weight = _weight(name, accept)
        if weight > 0:
            weights[name] = weight
    return sorted(weights, key=lambda name: -weights[name])  # stable: preference kept


def _weight(media_type: str, accept: str | None) -> float:
    """The weight Accept gives ``media_type``: that of its most specific matching range."""
    kind = media_type.split("/")[0]
    specificity = {media_type: 2, f"{kind}/*": 1, "*/*": 0}
    matching = [r for r in parse_accept(accept, keep_refused=True)
                if r.media_type in specificity]
    if not matching:
        return 0.0
    return max(matching, key=lambda r: specificity[r.media_type]).q


def _vary(response: Response) -> Response:
    response.headers["Vary"] = "Accept"
    return response


async def _rendered(archive, record, query, media_type: str) -> Response:
    """The instance drawn as ``media_type`` (a frame of it): 400 for a parameter that cannot
    be honoured, 406 for an object that is no image."""
    if "transferSyntax" in query:
        return PlainTextResponse(f"transferSyntax: for {DICOM} only, not {media_type}", 400)
    try:
        request = render.RenderRequest.from_query(query, media_type)
    except render.RenderError as exc:
        return PlainTextResponse(str(exc), status_code=400)

    def draw() -> bytes:
        with archive.open_instance(record.sop_instance_uid) as source:
            return render.render(source, request)

    try:
        body = await run_in_threadpool(draw)
    except render.RenderError as exc:
        return PlainTextResponse(str(exc), status_code=400)
    except render.NotRenderable as exc:
        return PlainTextResponse(f"{media_type}: {exc}", status_code=406)
    except MemoryError:  # not the image's fault: the client may ask again
        log.warning("WADO-URI: no memory to draw instance %s", record.sop_instance_uid)
        return PlainTextResponse("no memory to draw the image now", status_code=503,
                                 headers={"Retry-After": "10"})
    log.info("WADO-URI rendered instance %s as %s", record.sop_instance_uid, media_type)
    return Response(body, media_type=media_type)


def _is_uid(value: str) -> bool:
    return len(value) <= 64 and UID.match(value) is not None


def wado_routes(archive) -> list[Route]:
    """The WADO-RS and WADO-URI routes, to mount at the root of the service."""
    retrieve = _retrieve_endpoint(archive)
    metadata = _metadata_endpoint(archive)
    base = "/wado-rs/studies/{study}"
    series = base + "/series/{series}"
    instance = series + "/instances/{instance}"
    return [
        Route(base, retrieve, methods=["GET"]),
        Route(base + "/metadata", metadata, methods=["GET"]),
        Route(series, retrieve, methods=["GET"]),
        Route(series + "/metadata", metadata, methods=["GET"]),
        Route(instance, retrieve, methods=["GET"]),
        Route(instance + "/metadata", metadata, methods=["GET"]),
        Route("/wado", _wado_uri_endpoint(archive), methods=["GET"]),
    ]
