"""The Imaging Document Source on every NIST DEPT study that has images, end to end.

One running service (HTTP and DICOM on 127.0.0.1, the ``nist-ids`` profile, the NIST repository
unique id); each study is sent with dcmtk's storescu, published by the service's own worker, and
then read back as a consumer would: the manifest by ITI-43 is compared with the study's reference
manifest (kos/kos.dcm), and the registered DocumentEntry (ITI-18) with the NIST rules (README §5).
"""

from __future__ import annotations

import io
import os
import subprocess
import time

import pydicom
import pytest
from lxml import etree
from starlette.testclient import TestClient

from dicom.kos import manifest_summary
from tests.conftest import NIST_IDS, require_tool
from tests.repository_helpers import read_answer, retrieve_request, settings_for
from tests.servers import free_port
from xds import ebrim
from xds.jobs import DONE
from xds.runtime import build_app

pytestmark = pytest.mark.slow

NIST_SOURCE = "1.3.6.1.4.1.21367.13.80.110"
AFFINITY_AUTHORITY = "1.3.6.1.4.1.21367.2005.13.20.1000"
STUDIES = ["IDS-DEPT002-a", "IDS-DEPT003-a", "IDS-DEPT011-a", "IDS-DEPT021-a", "IDS-DEPT022-a",
           "IDS-DEPT024-a", "IDS-DEPT041-a", "IDS-DEPT042-a"]
# storescu proposes only uncompressed syntaxes and current SOP classes unless told (-R: propose
# what the files need; -xs / -xx: JPEG Lossless / JPEG 12-bit).
STORESCU_OPTIONS = {"IDS-DEPT021-a": ["-R", "-xs"], "IDS-DEPT041-a": ["-R", "-xs"],
                    "IDS-DEPT042-a": ["-R", "-xx"], "IDS-DEPT022-a": ["-R"]}  # 022: a retired SOP class


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    require_tool("storescu")
    settings = settings_for(tmp_path_factory.mktemp("nist"), source__profile="nist-ids",
                            source__unique_id=NIST_SOURCE)
    settings.dicom.port = free_port()
    app = build_app(settings, start_dicom=True, start_worker=True)
    with TestClient(app) as client:  # runs the lifespan: DICOM server and publishing worker
        client.settings = settings
        yield client


def send(settings, folder: str) -> None:
    files = sorted(str(p) for p in (NIST_IDS / folder / "images").iterdir())
    result = subprocess.run(["storescu", "-aet", "NIST", "-aec", settings.dicom.ae_title,
                             *STORESCU_OPTIONS.get(folder, []), "127.0.0.1", str(settings.dicom.port), *files],
                            env=dict(os.environ, TCP_NODELAY="1"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def publish(client, study_uid: str):
    jobs = client.app.state.components.jobs
    job_id = jobs.enqueue(study_uid, reason="test")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = jobs.get(job_id)
        if job.state in (DONE, "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {jobs.get(job_id)}")


def registered_entry(client, unique_id: str) -> etree._Element:
    registry = client.app.state.components.embedded_registry
    request = etree.fromstring(
        f'<query:AdhocQueryRequest xmlns:query="{ebrim.QUERY}" xmlns:rim="{ebrim.RIM}">'
        '<query:ResponseOption returnType="LeafClass" returnComposedObjects="true"/>'
        f'<rim:AdhocQuery id="{ebrim.GET_DOCUMENTS}"><rim:Slot name="$XDSDocumentEntryUniqueId"><rim:ValueList>'
        f"<rim:Value>('{unique_id}')</rim:Value></rim:ValueList></rim:Slot></rim:AdhocQuery>"
        "</query:AdhocQueryRequest>".encode())
    (entry,) = registry.stored_query(request).iter(ebrim.q("rim", "ExtrinsicObject"))
    return entry


def external_identifier(element, scheme: str) -> str:
    for identifier in element.findall(ebrim.q("rim", "ExternalIdentifier")):
        if identifier.get("identificationScheme") == scheme:
            return identifier.get("value")
    raise AssertionError(f"no ExternalIdentifier {scheme}")


def slot(element, name: str) -> list[str]:
    for s in element.findall(ebrim.q("rim", "Slot")):
        if s.get("name") == name:
            return [v.text for v in s.iter(ebrim.q("rim", "Value"))]
    return []


@pytest.mark.parametrize("folder", STUDIES)
def test_study_sent_published_and_read_back(service, folder):
    reference = pydicom.dcmread(NIST_IDS / folder / "kos" / "kos.dcm")
    expected = manifest_summary(reference)
    send(service.settings, folder)

    job = publish(service, expected["study_instance_uid"])
    assert job.state == DONE, job.detail

    # ITI-43: the manifest, as a consumer gets it.
    answer = read_answer(service.post("/xds/repository", content=retrieve_request(
        service.settings.repository.unique_id, job.document_unique_id),
        headers={"Content-Type": "application/soap+xml"}))
    ((mime_type, data),) = answer.documents().values()
    assert mime_type == "application/dicom"
    kos = pydicom.dcmread(io.BytesIO(data))
    got = manifest_summary(kos)

    assert got["study_instance_uid"] == expected["study_instance_uid"]
    assert {s: sorted(i) for s, i in got["series"].items()} == {s: sorted(i) for s, i in expected["series"].items()}
    assert got["sop_classes"] == expected["sop_classes"]
    assert got["retrieve_location_uid"] == NIST_SOURCE == expected["retrieve_location_uid"]
    for item in kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence:
        assert item.RetrieveAETitle == service.settings.dicom.ae_title
        assert item.RetrieveLocationUID == NIST_SOURCE
        assert item.RetrieveURL.endswith(f"/wado-rs/studies/{got['study_instance_uid']}/series/{item.SeriesInstanceUID}")
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                    "AccessionNumber", "StudyDate"):
        assert kos.get(keyword) == reference.get(keyword), keyword
    assert kos.ConceptNameCodeSequence[0].CodeValue == "113030"

    # ITI-18: the registered DocumentEntry and the NIST rules.
    entry = registered_entry(service, job.document_unique_id)
    number = folder[len("IDS-DEPT"):len("IDS-DEPT") + 3]
    assert external_identifier(entry, ebrim.DE_PATIENT_ID) == f"IDS-AD{number}-a^^^&{AFFINITY_AUTHORITY}&ISO"
    assert external_identifier(entry, ebrim.DE_UNIQUE_ID) == str(kos.SOPInstanceUID)
    assert entry.get("mimeType") == "application/dicom"
    assert entry.get("objectType") == ebrim.DOCUMENT_ENTRY_STABLE
    formats = [c for c in entry.findall(ebrim.q("rim", "Classification"))
               if c.get("classificationScheme") == ebrim.DE_FORMAT_CODE]
    assert [c.get("nodeRepresentation") for c in formats] == [ebrim.KOS_SOP_CLASS_UID]
    assert slot(entry, "sourcePatientId")[0].startswith(f"{reference.PatientID}^^^&")
    assert any(value.startswith(f"{reference.AccessionNumber}^^^") and value.endswith("urn:ihe:iti:xds:2013:accession")
               for value in slot(entry, ebrim.REFERENCE_ID_LIST_SLOT))
    assert slot(entry, "repositoryUniqueId") == [service.settings.repository.unique_id]


@pytest.mark.parametrize("folder", ["IDS-DEPT002-a", "IDS-DEPT041-a"])
def test_retrieve_url_and_retrieve_ae_of_the_manifest_work(service, folder):
    """What the manifest promises per series: WADO-RS at the Retrieve URL, C-FIND/C-MOVE at the
    Retrieve AE Title (checked with dcmtk's findscu against the service's own DICOM port)."""
    require_tool("findscu")
    reference = manifest_summary(pydicom.dcmread(NIST_IDS / folder / "kos" / "kos.dcm"))
    send(service.settings, folder)
    study = reference["study_instance_uid"]

    for series, instances in reference["series"].items():
        response = service.get(f"/wado-rs/studies/{study}/series/{series}",
                               headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        assert response.status_code == 200
        boundary = response.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
        assert response.content.count(b"--" + boundary.encode()) == len(instances) + 1

        found = subprocess.run(
            ["findscu", "-S", "-aet", "NIST", "-aec", service.settings.dicom.ae_title,
             "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={study}", "-k", f"SeriesInstanceUID={series}",
             "-k", "SOPInstanceUID", "127.0.0.1", str(service.settings.dicom.port)],
            env=dict(os.environ, TCP_NODELAY="1"), capture_output=True, text=True, timeout=60)
        assert found.returncode == 0, found.stderr
        assert (found.stdout + found.stderr).count("Find Response:") == len(instances)


def test_start_up_objects_are_frozen_while_the_service_runs(service):
    """The cycle collector leaves alone what start-up built (``freeze_start_up_objects``)."""
    import gc

    assert gc.get_freeze_count() > 10_000
