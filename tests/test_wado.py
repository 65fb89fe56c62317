"""WADO-RS (RAD-107) and WADO-URI (RAD-55) against an archive loaded with NIST DEPT studies.

The archive is real (SQLite index + file blob store); responses are checked byte for byte
against the instances the archive stores.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from tests.conftest import NIST_IDS

MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"

# DEPT002: MR, 2 series (20 + 16), Explicit VR LE; DEPT021: XA, 1 instance, JPEG Lossless;
# DEPT024: PT, 1 series of 10.
STUDY_002 = "1.3.6.1.4.1.21367.201599.1.201604020954059"
STUDY_021 = "1.3.6.1.4.1.21367.201599.1.201604020955043"
STUDY_024 = "1.3.6.1.4.1.21367.201599.1.201604020956016"
DEPT_FOLDERS = ("IDS-DEPT002-a", "IDS-DEPT021-a", "IDS-DEPT024-a")


def load_archive(root: Path, folders=DEPT_FOLDERS):
    """A fresh archive (SQLite + FileBlobStore under ``root``) holding the named DEPT studies."""
    from dicom.archive import Archive
    from dicom.importer import import_paths
    from dicom.index import create_index_tables

    from xds.blobstore import FileBlobStore
    from xds.db import create_engine

    engine = create_engine(f"sqlite:///{root / 'index.db'}")
    create_index_tables(engine)
    archive = Archive(engine, FileBlobStore(root / "blobs"))
    import_paths([NIST_IDS / folder / "images" for folder in folders], archive)
    return archive


def stored_bytes(archive, sop_uid: str) -> bytes:
    with archive.open_instance(sop_uid) as f:
        return f.read()


def parse_multipart(response) -> list[tuple[dict[str, str], bytes]]:
    """An independent reader of a multipart/related body: (headers, content) per part."""
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/related")
    assert 'type="application/dicom"' in content_type
    boundary = re.search(r'boundary="?([^";]+)"?', content_type).group(1).encode()

    body = response.content
    assert body.rstrip(b"\r\n").endswith(b"--" + boundary + b"--")
    parts = []
    for chunk in body.split(b"--" + boundary)[1:-1]:
        assert chunk.startswith(b"\r\n") and chunk.endswith(b"\r\n")
        head, _, content = chunk[2:-2].partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("ascii").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, content))
    return parts


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return load_archive(tmp_path_factory.mktemp("wado-archive"))


@pytest.fixture(scope="module")
def client(archive):
    from dicom.wado import wado_routes

    with TestClient(Starlette(routes=wado_routes(archive))) as test_client:
        yield test_client


def series_uids(archive, study_uid: str) -> list[str]:
    return sorted({r.series_instance_uid for r in archive.instances_of(study_uid)})


# -- WADO-RS retrieve ----------------------------------------------------------------------------


def test_study_retrieve_returns_every_stored_instance_byte_for_byte(archive, client):
    response = client.get(f"/wado-rs/studies/{STUDY_002}", headers={"Accept": MULTIPART_DICOM})
    assert response.status_code == 200

    parts = parse_multipart(response)
    records = {r.sop_instance_uid: r for r in archive.instances_of(STUDY_002)}
    assert len(parts) == len(records) == 36

    from io import BytesIO

    from pydicom import dcmread

    seen = set()
    for headers, content in parts:
        assert headers["content-type"].startswith("application/dicom")
        sop_uid = dcmread(BytesIO(content), stop_before_pixels=True).SOPInstanceUID
        assert content == stored_bytes(archive, sop_uid)
        assert f"transfer-syntax={records[sop_uid].transfer_syntax_uid}" in headers["content-type"]
        seen.add(sop_uid)
    assert seen == set(records)


def test_series_retrieve_returns_only_that_series(archive, client):
    _first, second = series_uids(archive, STUDY_002)
    response = client.get(f"/wado-rs/studies/{STUDY_002}/series/{second}",
                          headers={"Accept": f"{MULTIPART_DICOM}; transfer-syntax=*"})
    assert response.status_code == 200

    expected = {r.sop_instance_uid for r in archive.instances_of(STUDY_002, second)}
    contents = [content for _, content in parse_multipart(response)]
    assert len(contents) == len(expected) == 16
    assert sorted(contents) == sorted(stored_bytes(archive, uid) for uid in expected)


def test_instance_retrieve_and_the_default_accept(archive, client):
    record = archive.instances_of(STUDY_024)[3]
    url = (f"/wado-rs/studies/{STUDY_024}/series/{record.series_instance_uid}"
           f"/instances/{record.sop_instance_uid}")

    # No Accept header at all: the server's default representation is multipart.
    for headers in ({}, {"Accept": f"{MULTIPART_DICOM}; transfer-syntax={EXPLICIT_LE}"}):
        response = client.get(url, headers=headers)
        assert response.status_code == 200
        [(_, content)] = parse_multipart(response)
        assert content == stored_bytes(archive, record.sop_instance_uid)

    # A bare application/dicom is honoured for a single instance.
    response = client.get(url, headers={"Accept": "application/dicom"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom")
    assert response.content == stored_bytes(archive, record.sop_instance_uid)


def test_compressed_instance_is_served_as_stored_or_refused(archive, client):
    [record] = archive.instances_of(STUDY_021)
    url = f"/wado-rs/studies/{STUDY_021}/series/{record.series_instance_uid}"
    assert record.transfer_syntax_uid == JPEG_LOSSLESS_SV1

    accepted = client.get(url, headers={"Accept": f"{MULTIPART_DICOM}; transfer-syntax=*"})
    assert accepted.status_code == 200
    [(headers, content)] = parse_multipart(accepted)
    assert content == stored_bytes(archive, record.sop_instance_uid)
    assert f"transfer-syntax={JPEG_LOSSLESS_SV1}" in headers["content-type"]

    # Explicit VR LE would need decompression, which this service does not do: 406.
    refused = client.get(url, headers={"Accept": f"{MULTIPART_DICOM}; transfer-syntax={EXPLICIT_LE}"})
    assert refused.status_code == 406

    # A list where a later entry is satisfiable picks that entry.
    both = client.get(url, headers={
        "Accept": f"{MULTIPART_DICOM}; transfer-syntax={EXPLICIT_LE}, "
                  f"{MULTIPART_DICOM}; transfer-syntax={JPEG_LOSSLESS_SV1}; q=0.5"})
    assert both.status_code == 200


def test_unsupported_media_types_are_refused(client):
    for accept in ("image/jpeg", 'multipart/related; type="image/jpeg"', "application/dicom"):
        response = client.get(f"/wado-rs/studies/{STUDY_002}", headers={"Accept": accept})
        assert response.status_code == 406, accept


def test_unknown_or_misplaced_uids_are_404(archive, client):
    first, second = series_uids(archive, STUDY_002)
    in_second = archive.instances_of(STUDY_002, second)[0].sop_instance_uid
    in_other_study = archive.instances_of(STUDY_024)[0]

    for path in (
        "/wado-rs/studies/1.2.3.4",
        f"/wado-rs/studies/{STUDY_002}/series/1.2.3.4",
        f"/wado-rs/studies/{STUDY_002}/series/{first}/instances/1.2.3.4",
        f"/wado-rs/studies/{STUDY_002}/series/{first}/instances/{in_second}",  # wrong series
        f"/wado-rs/studies/{STUDY_002}/series/{in_other_study.series_instance_uid}",  # wrong study
        f"/wado-rs/studies/{STUDY_002}/series/{first}/instances/{in_second}/metadata",
        "/wado-rs/studies/1.2.3.4/metadata",
    ):
        assert client.get(path).status_code == 404, path


# -- WADO-RS metadata --------------------------------------------------------------------------


def test_study_metadata_names_every_instance_without_pixel_data(archive, client):
    response = client.get(f"/wado-rs/studies/{STUDY_002}/metadata",
                          headers={"Accept": "application/dicom+json"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")

    objects = response.json()
    records = {r.sop_instance_uid: r for r in archive.instances_of(STUDY_002)}
    assert len(objects) == len(records)
    for obj in objects:
        # Tags in the DICOM JSON model: 0020000D study, 0020000E series, 00080018 SOP instance.
        assert obj["0020000D"]["Value"] == [STUDY_002]
        record = records[obj["00080018"]["Value"][0]]
        assert obj["0020000E"]["Value"] == [record.series_instance_uid]
        assert obj["00080016"]["Value"] == [record.sop_class_uid]
        assert "7FE00010" not in obj


def test_instance_metadata_and_406_for_other_types(archive, client):
    record = archive.instances_of(STUDY_021)[0]
    base = (f"/wado-rs/studies/{STUDY_021}/series/{record.series_instance_uid}"
            f"/instances/{record.sop_instance_uid}/metadata")

    [obj] = client.get(base).json()
    assert obj["00080018"]["Value"] == [record.sop_instance_uid]
    assert obj["00280008"]["Value"] == [12]  # Number of Frames survives; pixels do not
    assert "7FE00010" not in obj

    assert client.get(base, headers={"Accept": "application/dicom+xml"}).status_code == 406


# -- WADO-URI ----------------------------------------------------------------------------------


def wado_uri(study: str | None, series: str | None, obj: str | None, **extra) -> dict:
    params = {"requestType": "WADO", "contentType": "application/dicom", **extra}
    for name, value in (("studyUID", study), ("seriesUID", series), ("objectUID", obj)):
        if value is not None:
            params[name] = value
    return params


def test_wado_uri_returns_the_stored_instance(archive, client):
    for record in (archive.instances_of(STUDY_002)[5], archive.instances_of(STUDY_021)[0]):
        response = client.get("/wado", params=wado_uri(record_study(archive, record),
                                                        record.series_instance_uid,
                                                        record.sop_instance_uid))
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/dicom")
        assert response.content == stored_bytes(archive, record.sop_instance_uid)


def record_study(archive, record) -> str:
    for study in (STUDY_002, STUDY_021, STUDY_024):
        if any(r.sop_instance_uid == record.sop_instance_uid for r in archive.instances_of(study)):
            return study
    raise AssertionError("record not in any loaded study")


def test_wado_uri_bad_requests_are_400(archive, client):
    record = archive.instances_of(STUDY_002)[0]
    good = (STUDY_002, record.series_instance_uid, record.sop_instance_uid)

    cases = [
        {**wado_uri(*good), "requestType": "WADO-RS"},
        {k: v for k, v in wado_uri(*good).items() if k != "requestType"},
        wado_uri(None, good[1], good[2]),
        wado_uri(good[0], None, good[2]),
        wado_uri(good[0], good[1], None),
        wado_uri(good[0], good[1], "1.2.abc"),
    ]
    for params in cases:
        assert client.get("/wado", params=params).status_code == 400, params


def test_wado_uri_unknown_objects_are_404(archive, client):
    first, second = series_uids(archive, STUDY_002)
    in_first = archive.instances_of(STUDY_002, first)[0].sop_instance_uid
    other = archive.instances_of(STUDY_024)[0]

    # The NIST ids_4810 exception cases: unknown SOP, SOP of another series, of another study,
    # and empty study / series UIDs.
    cases = [
        wado_uri(STUDY_002, first, "1.2.3.4.5"),
        wado_uri(STUDY_002, second, in_first),
        wado_uri(STUDY_002, first, other.sop_instance_uid),
        wado_uri("", first, in_first),
        wado_uri(STUDY_002, "", in_first),
        wado_uri("", "", in_first),
    ]
    for params in cases:
        assert client.get("/wado", params=params).status_code == 404, params


def rendered(client, record, study: str, **extra):
    """A WADO-URI GET with ``extra`` (contentType=None: none sent); the response, and the
    image Pillow reads from it when it is one."""
    from io import BytesIO

    from PIL import Image

    params = wado_uri(study, record.series_instance_uid, record.sop_instance_uid, **extra)
    params = {name: value for name, value in params.items() if value is not None}
    response = client.get("/wado", params=params)
    image = None
    if response.status_code == 200 and response.headers["content-type"].startswith("image/"):
        image = Image.open(BytesIO(response.content))
        image.load()
    return response, image


def test_wado_uri_draws_a_single_frame_image_as_jpeg_unless_told_otherwise(archive, client):
    """PS3.18's default for a single-frame image is image/jpeg; an explicit
    application/dicom still gets the stored object."""
    record = archive.instances_of(STUDY_002)[3]
    header = archive.header(record.sop_instance_uid)

    response, image = rendered(client, record, STUDY_002, contentType=None)
    assert response.headers["content-type"] == "image/jpeg"
    assert (image.format, image.mode) == ("JPEG", "L")
    assert image.size == (header.Columns, header.Rows)

    response, image = rendered(client, record, STUDY_002, contentType="image/png")
    assert (image.format, image.size) == ("PNG", (header.Columns, header.Rows))

    response, _ = rendered(client, record, STUDY_002)  # contentType=application/dicom
    assert response.content == stored_bytes(archive, record.sop_instance_uid)


def test_wado_uri_window_region_and_size_shape_the_image(archive, client):
    record = archive.instances_of(STUDY_002)[3]
    header = archive.header(record.sop_instance_uid)
    png = {"contentType": "image/png"}

    _, narrow = rendered(client, record, STUDY_002, windowCenter="100", windowWidth="50", **png)
    _, wide = rendered(client, record, STUDY_002, windowCenter="100", windowWidth="2000", **png)
    assert narrow.tobytes() != wide.tobytes()
    _, dark = rendered(client, record, STUDY_002, windowCenter="100000", windowWidth="10",
                       **png)
    assert set(dark.tobytes()) == {0}  # every value below the window

    _, half = rendered(client, record, STUDY_002, region="0,0,0.5,0.5", **png)
    assert half.size == (round(header.Columns / 2), round(header.Rows / 2))
    _, small = rendered(client, record, STUDY_002, rows="32", **png)
    assert small.size[1] == 32
    assert abs(small.size[0] - header.Columns * 32 / header.Rows) <= 1
    _, box = rendered(client, record, STUDY_002, rows="1000", columns="40", **png)
    assert box.size[0] == 40  # fits within both, aspect kept


def test_wado_uri_multi_frame_objects_default_to_dicom_and_draw_one_frame(archive, client):
    record = archive.instances_of(STUDY_021)[0]  # XA, 12 frames, JPEG Lossless
    response, _ = rendered(client, record, STUDY_021, contentType=None)
    assert response.headers["content-type"].startswith("application/dicom")
    assert response.content == stored_bytes(archive, record.sop_instance_uid)

    _, first = rendered(client, record, STUDY_021, contentType="image/png")
    _, last = rendered(client, record, STUDY_021, contentType="image/png", frameNumber="12")
    assert first.size == last.size and first.tobytes() != last.tobytes()
    response, _ = rendered(client, record, STUDY_021, contentType="image/png", frameNumber="13")
    assert response.status_code == 400 and "frameNumber" in response.text


@pytest.mark.parametrize("extra, named", [
    ({"contentType": "image/jpeg", "windowCenter": "40"}, "windowWidth"),
    ({"contentType": "image/jpeg", "windowCenter": "40", "windowWidth": "0"}, "windowWidth"),
    ({"contentType": "image/jpeg", "region": "0.5,0.5,0.2,0.9"}, "region"),
    ({"contentType": "image/jpeg", "rows": "0"}, "rows"),
    ({"contentType": "image/jpeg", "columns": "many"}, "columns"),
    ({"contentType": "image/jpeg", "imageQuality": "101"}, "imageQuality"),
    ({"contentType": "image/jpeg", "transferSyntax": EXPLICIT_LE}, "transferSyntax"),
    ({"rows": "64"}, "rows"),  # with application/dicom
    ({"anonymize": "yes"}, "anonymize"),  # never ignored: it would hand out identities
    ({"contentType": "image/jpeg", "annotation": "patient"}, "annotation"),
])
def test_wado_uri_parameters_that_cannot_be_honoured_are_400_by_name(archive, client, extra,
                                                                     named):
    record = archive.instances_of(STUDY_002)[0]
    response, _ = rendered(client, record, STUDY_002, **extra)
    assert response.status_code == 400
    assert named in response.text


def test_wado_uri_content_negotiation_follows_ps3_18(archive, client):
    single = archive.instances_of(STUDY_002)[3]
    multi = archive.instances_of(STUDY_021)[0]

    response, image = rendered(client, single, STUDY_002,
                               contentType="image/jpeg;q=0.2,image/png")
    assert image.format == "PNG"  # the better weighted
    response, _ = rendered(client, single, STUDY_002, contentType="application/dicom,image/jpeg")
    assert response.status_code == 400 and "mixed" in response.text

    params = wado_uri(STUDY_002, single.series_instance_uid, single.sop_instance_uid)
    del params["contentType"]
    response = client.get("/wado", params=params, headers={"Accept": "application/dicom"})
    assert response.headers["content-type"].startswith("application/dicom")
    response = client.get("/wado", params={**params, "transferSyntax": EXPLICIT_LE})
    assert response.headers["content-type"].startswith("application/dicom")
    response = client.get("/wado", params=[*params.items(), ("rows", "8"), ("rows", "9")])
    assert response.status_code == 400 and "rows" in response.text

    response, _ = rendered(client, single, STUDY_002, contentType="image/png", frameNumber="1")
    assert response.status_code == 400 and "multi-frame" in response.text
    response, image = rendered(client, multi, STUDY_021, contentType=None, frameNumber="2")
    assert image.format == "JPEG"  # one frame asked for: an image, as for a single frame


def test_wado_uri_without_content_type_follows_the_accept_header(archive, client):
    single = archive.instances_of(STUDY_002)[3]
    params = wado_uri(STUDY_002, single.series_instance_uid, single.sop_instance_uid)
    del params["contentType"]

    def answer(accept: str):
        return client.get("/wado", params=params, headers={"Accept": accept})

    assert answer("image/png").headers["content-type"] == "image/png"
    assert answer("image/jpeg;q=0, */*").headers["content-type"] == "image/png"  # q=0 refuses
    dicom = answer("application/dicom")
    assert dicom.headers["content-type"] == "application/dicom"
    assert dicom.headers["vary"] == "Accept"
    refused = answer("text/html")
    assert refused.status_code == 406 and "image/jpeg" in refused.text
    chosen = answer("*/*")
    assert chosen.headers["content-type"] == "image/jpeg"
    assert chosen.headers["vary"] == "Accept"  # a cache must not hand it to a DICOM client


def test_wado_uri_no_memory_to_draw_is_503_to_ask_again(archive, client, monkeypatch):
    from dicom import render

    def out_of_memory(*_args, **_kwargs):
        raise MemoryError

    monkeypatch.setattr(render, "render", out_of_memory)
    single = archive.instances_of(STUDY_002)[3]
    response, _ = rendered(client, single, STUDY_002, contentType="image/jpeg")
    assert response.status_code == 503 and response.headers["retry-after"]


def test_wado_uri_other_content_types_and_stored_syntaxes_are_406(archive, client):
    record = archive.instances_of(STUDY_024)[0]
    for content_type in ("image/gif", "text/html"):
        response, _ = rendered(client, record, STUDY_024, contentType=content_type)
        assert response.status_code == 406 and "image/jpeg" in response.text

    response, _ = rendered(client, record, STUDY_024, transferSyntax=JPEG_LOSSLESS_SV1)
    assert response.status_code == 406


def test_wado_uri_an_object_without_pixels_is_dicom_by_default_and_406_as_an_image(tmp_path):
    """A Key Object Selection document has no image: application/dicom when no contentType
    is given, 406 for image/jpeg."""
    from pydicom import dcmread

    from dicom.wado import wado_routes
    from tests.test_archive import new_archive

    archive = new_archive(tmp_path / "archive")
    kos = NIST_IDS / "IDS-DEPT002-a" / "kos" / "kos.dcm"
    archive.store(kos)
    ds = dcmread(kos, stop_before_pixels=True)
    params = wado_uri(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    with TestClient(Starlette(routes=wado_routes(archive))) as kos_client:
        del params["contentType"]
        response = kos_client.get("/wado", params=params)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/dicom")
        response = kos_client.get("/wado", params={**params, "contentType": "image/jpeg"})
        assert response.status_code == 406


def test_study_retrieve_is_streamed_in_bounded_chunks(client):
    """The body reaches the server in pieces of at most one read chunk, never as one buffer."""
    from dicom.wado import CHUNK

    sizes = []
    with client.stream("GET", f"/wado-rs/studies/{STUDY_002}",
                       headers={"Accept": MULTIPART_DICOM}) as response:
        assert response.status_code == 200
        sizes = [len(chunk) for chunk in response.iter_raw()]
    assert sum(sizes) > 36 * 100_000
    assert len(sizes) > 36 and max(sizes) <= CHUNK
