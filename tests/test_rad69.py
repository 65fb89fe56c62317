"""RAD-69 Retrieve Imaging Document Set over HTTP against the archived NIST DEPT studies.

The NIST cases (ids_2018-4811 cases 00–09, ids_2018-4803, ids_2018-4820) run with the UIDs of
their requests where those address a DEPT study; cases that name the 2018 studies (images not
public) run the same check on DEPT002's UIDs. Every served instance must be byte-identical to the
stored file, or, when transcoded, decode to the same pixels.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pydicom
import pytest
from starlette.testclient import TestClient

from tests import corpus
from tests.conftest import NIST_IDS
from tests.repository_helpers import read_answer, settings_for
from xds import ebrim
from xds.runtime import build_app

SOURCE = "1.3.6.1.4.1.21367.13.80.110"
STUDY = "1.3.6.1.4.1.21367.201599.1.201604020954059"
SERIES = "1.3.6.1.4.1.21367.201599.2.201604020954059"
ENDPOINT = "/xdsi/imaging-source"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from dicom.importer import import_paths

    settings = settings_for(tmp_path_factory.mktemp("rad69"), source__unique_id=SOURCE)
    app = build_app(settings, start_dicom=False, start_worker=False)
    archive = app.state.components.archive
    for folder in ("IDS-DEPT002-a", "IDS-DEPT021-a", "IDS-DEPT041-a", "IDS-DEPT042-a"):
        import_paths([NIST_IDS / folder / "images"], archive)
    with TestClient(app) as test_client:
        test_client.archive = archive
        yield test_client


def rad69(client, body: bytes):
    content_type, data = corpus.mtom_single_part(corpus.wrap_in_envelope(body, ebrim.RAD69_ACTION),
                                                 ebrim.RAD69_ACTION)
    answer = read_answer(client.post(ENDPOINT, content=data, headers={"Content-Type": content_type}))
    assert answer.status_code == 200 and answer.is_mtom
    assert answer.action == ebrim.RAD69_RESPONSE_ACTION
    return answer


def request(study: str, series: str, *instances: str, syntaxes=("1.2.840.10008.1.2.1",), repository=SOURCE,
            home: str | None = None) -> bytes:
    documents = "".join(
        "<xds:DocumentRequest>" + (f"<xds:HomeCommunityId>{home}</xds:HomeCommunityId>" if home else "")
        + f"<xds:RepositoryUniqueId>{repository}</xds:RepositoryUniqueId>"
        f"<xds:DocumentUniqueId>{uid}</xds:DocumentUniqueId></xds:DocumentRequest>" for uid in instances)
    listed = "".join(f"<xdsi:TransferSyntaxUID>{uid}</xdsi:TransferSyntaxUID>" for uid in syntaxes)
    return (f'<xdsi:RetrieveImagingDocumentSetRequest xmlns:xdsi="{ebrim.XDSI}" xmlns:xds="{ebrim.XDS}">'
            f'<xdsi:StudyRequest studyInstanceUID="{study}"><xdsi:SeriesRequest seriesInstanceUID="{series}">'
            f"{documents}</xdsi:SeriesRequest></xdsi:StudyRequest>"
            f"<xdsi:TransferSyntaxUIDList>{listed}</xdsi:TransferSyntaxUIDList>"
            "</xdsi:RetrieveImagingDocumentSetRequest>").encode()


def stored_bytes(client, sop_uid: str) -> bytes:
    with client.archive.open_instance(sop_uid) as f:
        return f.read()


def instance(n: int) -> str:
    return f"1.3.6.1.4.1.21367.201599.3.201604020954059.{n}"


def series_instances(client, series: str) -> list[str]:
    return [i.sop_instance_uid for i in client.archive.instances_of(STUDY, series)]


def test_whole_study_in_the_stored_syntax_is_byte_identical(client):
    """ids_2018-4803: every instance of a multi-series study, Explicit VR LE requested."""
    series_uids = [s.series_instance_uid for s in client.archive.series_of(STUDY)]
    body = (f'<xdsi:RetrieveImagingDocumentSetRequest xmlns:xdsi="{ebrim.XDSI}" xmlns:xds="{ebrim.XDS}">'
            f'<xdsi:StudyRequest studyInstanceUID="{STUDY}">')
    expected = []
    for series in series_uids:
        body += f'<xdsi:SeriesRequest seriesInstanceUID="{series}">'
        for uid in series_instances(client, series):
            expected.append(uid)
            body += (f"<xds:DocumentRequest><xds:RepositoryUniqueId>{SOURCE}</xds:RepositoryUniqueId>"
                     f"<xds:DocumentUniqueId>{uid}</xds:DocumentUniqueId></xds:DocumentRequest>")
        body += "</xdsi:SeriesRequest>"
    body += ("</xdsi:StudyRequest><xdsi:TransferSyntaxUIDList><xdsi:TransferSyntaxUID>1.2.840.10008.1.2.1"
             "</xdsi:TransferSyntaxUID></xdsi:TransferSyntaxUIDList></xdsi:RetrieveImagingDocumentSetRequest>")
    answer = rad69(client, body.encode())
    assert answer.status == ebrim.SUCCESS
    documents = answer.documents()
    assert sorted(documents) == sorted(expected) and len(expected) == 36
    for uid, (mime_type, data) in documents.items():
        assert mime_type == "application/dicom"
        assert data == stored_bytes(client, uid)


@pytest.mark.parametrize("case, code", [
    ("case-01_Invalid_RepositoryUID", "XDSUnknownRepositoryId"),
    ("case-05_Empty_Study_Instance_UID", "XDSRepositoryError"),
    ("case-06_Empty_Series_Instance_UID", "XDSRepositoryError"),
    ("case-07_Empty_Study_and_Series_Instance_UIDs", "XDSRepositoryError"),
])
def test_nist_4811_cases_on_dept002_as_published(client, case, code):
    folder = NIST_IDS / "testkit" / "ids_2018-4811" / case
    (request_file,) = [p for p in folder.rglob("*.xml") if b"RetrieveImagingDocumentSetRequest" in p.read_bytes()
                       and b"TestPlan" not in p.read_bytes()]
    answer = rad69(client, request_file.read_bytes())
    assert answer.status == ebrim.FAILURE and answer.documents() == {}
    assert answer.error_codes == [code]
    requested = re.search(rb"<[^>]*DocumentUniqueId>([^<]+)<", request_file.read_bytes()).group(1).decode()
    assert answer.errors[0].get("location") == requested


def test_nist_4811_case_00_comparison_on_dept002(client):
    answer = rad69(client, request(STUDY, SERIES, instance(1)))
    assert answer.status == ebrim.SUCCESS
    assert answer.documents()[instance(1)][1] == stored_bytes(client, instance(1))


@pytest.mark.parametrize("study, series, sop, why", [
    (STUDY, SERIES, "1.2.3.999.1", "unknown SOP instance (case 02)"),
    (STUDY, SERIES + ".2", instance(1), "instance not in the requested series (case 03)"),
    ("1.2.3.4.5", SERIES, instance(1), "instance not in the requested study (case 04)"),
])
def test_nist_4811_unknown_or_misplaced_instances(client, study, series, sop, why):
    answer = rad69(client, request(study, series, sop))
    assert answer.status == ebrim.FAILURE, why
    assert [(e.get("errorCode"), e.get("location")) for e in answer.errors] == [("XDSDocumentUniqueIdError", sop)]


@pytest.mark.parametrize("syntaxes", [(), ("",), ("1.2.840.10008.1.2.1.999",)],
                         ids=["no-syntax", "empty-syntax (case 08)", "unknown-syntax (case 09)"])
def test_nist_4811_bad_transfer_syntax_lists(client, syntaxes):
    answer = rad69(client, request(STUDY, SERIES, instance(1), syntaxes=syntaxes))
    assert answer.status == ebrim.FAILURE
    assert [(e.get("errorCode"), e.get("location")) for e in answer.errors] == [("XDSRepositoryError", instance(1))]


def test_some_served_some_not_is_partial_success(client):
    answer = rad69(client, request(STUDY, SERIES, instance(1), "1.2.3.999.1"))
    assert answer.status == ebrim.PARTIAL_SUCCESS
    assert list(answer.documents()) == [instance(1)]
    assert [e.get("location") for e in answer.errors] == ["1.2.3.999.1"]


def test_home_community_id_is_echoed(client):
    """ids_2018-4820 (and corpus file 24)."""
    home = "urn:oid:1.3.6.1.4.1.21367.13.70.200"
    answer = rad69(client, request(STUDY, SERIES, instance(1), home=home))
    response = answer.body.find(ebrim.q("xds", "DocumentResponse"))
    assert response.findtext(ebrim.q("xds", "HomeCommunityId")) == home


def pixels(data: bytes) -> np.ndarray:
    return pydicom.dcmread(io.BytesIO(data)).pixel_array


@pytest.mark.parametrize("target", [
    "1.2.840.10008.1.2",       # Implicit VR Little Endian
    "1.2.840.10008.1.2.5",     # RLE Lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
])
def test_uncompressed_instances_are_transcoded_losslessly(client, target):
    answer = rad69(client, request(STUDY, SERIES, instance(1), syntaxes=(target,)))
    assert answer.status == ebrim.SUCCESS, answer.errors
    data = answer.documents()[instance(1)][1]
    returned = pydicom.dcmread(io.BytesIO(data))
    assert returned.file_meta.TransferSyntaxUID == target
    assert returned.SOPInstanceUID == instance(1) and returned.PatientID == "IDS-DEPT002-a"
    assert np.array_equal(returned.pixel_array, pixels(stored_bytes(client, instance(1))))


def test_jpeg_lossless_instance_is_decompressed_when_asked(client):
    (record,) = client.archive.instances_of("1.3.6.1.4.1.21367.201599.1.201604020957000")
    answer = rad69(client, request(record.study_instance_uid, record.series_instance_uid, record.sop_instance_uid,
                                   syntaxes=("1.2.840.10008.1.2.1",)))
    assert answer.status == ebrim.SUCCESS
    data = answer.documents()[record.sop_instance_uid][1]
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert np.array_equal(pixels(data), pixels(stored_bytes(client, record.sop_instance_uid)))


def test_a_syntax_that_cannot_be_produced_is_an_error_not_a_mislabelled_instance(client):
    # JPEG Baseline (lossy) for an uncompressed image: never produced by us.
    answer = rad69(client, request(STUDY, SERIES, instance(1), syntaxes=("1.2.840.10008.1.2.4.50",)))
    assert answer.status == ebrim.FAILURE and answer.error_codes == ["XDSRepositoryError"]


def test_preference_order_is_kept_and_stored_syntax_wins(client):
    answer = rad69(client, request(STUDY, SERIES, instance(1),
                                   syntaxes=("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1")))
    data = answer.documents()[instance(1)][1]
    assert data == stored_bytes(client, instance(1))  # stored Explicit VR LE was listed


def test_corpus_4803b_request_shape_is_understood(client):
    """corpus 21: its studies are the 2018 data set (not public): every instance is unknown here."""
    answer = rad69(client, corpus.read("nist-ids_2018-4803b-rad69-request.xml"))
    assert answer.status == ebrim.FAILURE
    assert len(answer.errors) == 11 and set(answer.error_codes) == {"XDSDocumentUniqueIdError"}
