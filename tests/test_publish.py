"""Publishing: a NIST study archived, its KOS built, submitted to the co-located repository,
registered in the embedded registry, found by ITI-18 and read back by ITI-43; a changed study
republished as a replacement (RPLC) that deprecates the earlier entry; a registry outage retried.
"""

from __future__ import annotations

import asyncio
import io
import shutil

import pydicom
import pytest
from lxml import etree

from dicom.kos import manifest_summary
from tests.conftest import NIST_IDS
from tests.repository_helpers import settings_for
from xds import ebrim
from xds.jobs import DONE, FAILED, RETRYING, JobQueue, ManifestLedger
from xds.publisher import Publisher
from xds.retrieve import retrieve_document_set
from xds.runtime import open_archive
from xds.service import Components

DEPT002 = NIST_IDS / "IDS-DEPT002-a" / "images"
DEPT002_STUDY = "1.3.6.1.4.1.21367.201599.1.201604020954059"


@pytest.fixture
def world(tmp_path, database_url):
    settings = settings_for(tmp_path, storage__database_url=database_url, source__profile="nist-ids",
                            source__unique_id="1.3.6.1.4.1.21367.13.80.110")
    components = Components(settings)
    archive = open_archive(settings, components.engine, components.blobstore)
    jobs = JobQueue(components.engine)
    publisher = Publisher(settings, archive, components.blobstore, jobs, ManifestLedger(components.engine),
                          repository=components.repository)
    return settings, components, archive, jobs, publisher


def import_files(archive, files):
    from dicom.importer import import_paths

    return import_paths(files, archive)


def find_documents(registry, patient_id: str, *statuses: str) -> list[etree._Element]:
    request = etree.fromstring(
        f'<query:AdhocQueryRequest xmlns:query="{ebrim.QUERY}" xmlns:rim="{ebrim.RIM}">'
        '<query:ResponseOption returnType="LeafClass" returnComposedObjects="true"/>'
        f'<rim:AdhocQuery id="{ebrim.FIND_DOCUMENTS}">'
        '<rim:Slot name="$XDSDocumentEntryPatientId"><rim:ValueList><rim:Value>x</rim:Value></rim:ValueList></rim:Slot>'
        '<rim:Slot name="$XDSDocumentEntryStatus"><rim:ValueList><rim:Value>x</rim:Value></rim:ValueList></rim:Slot>'
        "</rim:AdhocQuery></query:AdhocQueryRequest>".encode())
    values = list(request.iter(ebrim.q("rim", "Value")))
    values[0].text = f"'{patient_id}'"
    values[1].text = "(" + ",".join(f"'{s}'" for s in statuses) + ")"
    return list(registry.stored_query(request).iter(ebrim.q("rim", "ExtrinsicObject")))


def unique_id_of(extrinsic) -> str:
    for identifier in extrinsic.findall(ebrim.q("rim", "ExternalIdentifier")):
        if identifier.get("identificationScheme") == ebrim.DE_UNIQUE_ID:
            return identifier.get("value")
    raise AssertionError("no uniqueId")


def test_publish_registers_a_retrievable_manifest(world):
    settings, components, archive, jobs, publisher = world
    assert import_files(archive, [DEPT002]).stored == 36

    job_id = jobs.enqueue(DEPT002_STUDY, reason="test")
    asyncio.run(publisher.run_job(jobs.claim()))
    job = jobs.get(job_id)
    assert job.state == DONE, job.detail

    (entry,) = find_documents(components.embedded_registry, "IDS-AD002-a^^^&1.3.6.1.4.1.21367.2005.13.20.1000&ISO",
                              ebrim.STATUS_APPROVED)
    assert unique_id_of(entry) == job.document_unique_id
    assert entry.get("mimeType") == "application/dicom"

    request = etree.fromstring(
        f'<xds:RetrieveDocumentSetRequest xmlns:xds="{ebrim.XDS}"><xds:DocumentRequest>'
        f"<xds:RepositoryUniqueId>{settings.repository.unique_id}</xds:RepositoryUniqueId>"
        f"<xds:DocumentUniqueId>{job.document_unique_id}</xds:DocumentUniqueId>"
        "</xds:DocumentRequest></xds:RetrieveDocumentSetRequest>".encode())
    result = retrieve_document_set(request, repository_unique_id=settings.repository.unique_id,
                                   store=components.repository_store, blobstore=components.blobstore,
                                   max_documents=10)
    ((_, mime_type, path),) = result.served
    kos = pydicom.dcmread(path)
    summary = manifest_summary(kos)
    assert mime_type == "application/dicom"
    assert summary["study_instance_uid"] == DEPT002_STUDY
    assert sum(len(v) for v in summary["series"].values()) == 36
    assert summary["retrieve_location_uid"] == settings.source.unique_id
    assert summary["retrieve_ae_title"] == settings.dicom.ae_title


def test_changed_study_is_republished_as_a_replacement(world, tmp_path):
    settings, components, archive, jobs, publisher = world
    files = sorted(DEPT002.glob("*.dcm"))
    import_files(archive, files[:20])
    first = asyncio.run(publisher.publish(DEPT002_STUDY))
    assert first.instance_count == 20 and first.replaced is None

    import_files(archive, files[20:])
    second = asyncio.run(publisher.publish(DEPT002_STUDY))
    assert second.instance_count == 36 and second.replaced == first.document_unique_id

    patient = "IDS-AD002-a^^^&1.3.6.1.4.1.21367.2005.13.20.1000&ISO"
    approved = find_documents(components.embedded_registry, patient, ebrim.STATUS_APPROVED)
    deprecated = find_documents(components.embedded_registry, patient, ebrim.STATUS_DEPRECATED)
    assert [unique_id_of(e) for e in approved] == [second.document_unique_id]
    assert [unique_id_of(e) for e in deprecated] == [first.document_unique_id]


def test_unreachable_registry_is_retried_and_unknown_study_fails(tmp_path, database_url):
    settings = settings_for(tmp_path, storage__database_url=database_url, source__profile="nist-ids",
                            registry__embedded=False, repository__registry_url="http://127.0.0.1:9/registry")
    components = Components(settings)
    archive = open_archive(settings, components.engine, components.blobstore)
    jobs = JobQueue(components.engine)
    publisher = Publisher(settings, archive, components.blobstore, jobs, ManifestLedger(components.engine),
                          repository=components.repository)
    import_files(archive, [DEPT002])

    job_id = jobs.enqueue(DEPT002_STUDY, reason="test")
    asyncio.run(publisher.run_job(jobs.claim()))
    job = jobs.get(job_id)
    assert job.state == RETRYING and "XDSRegistryNotAvailable" in job.detail

    unknown = jobs.enqueue("1.2.3.4.5", reason="test")
    asyncio.run(publisher.run_job(jobs.claim()))
    assert jobs.get(unknown).state == FAILED and "not in the archive" in jobs.get(unknown).detail


def test_stable_study_is_queued_automatically_once(world):
    settings, components, archive, jobs, publisher = world
    settings.source.publish_delay_seconds = 0.05
    import_files(archive, [DEPT002])
    import time

    publisher.queue_stable_studies()
    assert jobs.list() == []  # not quiet long enough yet
    time.sleep(0.2)
    publisher.queue_stable_studies()
    publisher.queue_stable_studies()  # a waiting job is not queued twice
    (job,) = jobs.list()
    assert job.reason == "stable"

    asyncio.run(publisher.run_job(jobs.claim()))
    assert jobs.get(job.id).state == DONE
    publisher.queue_stable_studies()  # published and unchanged: nothing new
    assert len(jobs.list()) == 1


def test_rad68_to_an_external_repository(tmp_path, database_url):
    """The Imaging Document Source submits over SOAP 1.2 / MTOM to a Document Repository that
    runs as a separate HTTP service (another instance of this product, on 127.0.0.1)."""
    from tests.servers import serve
    from xds.service import create_app

    remote_settings = settings_for(tmp_path / "remote")
    remote = create_app(remote_settings)
    with serve(remote) as base:
        settings = settings_for(tmp_path / "source", storage__database_url=database_url, source__profile="nist-ids",
                                source__repository_url=f"{base}/xds/repository")
        components = Components(settings)
        archive = open_archive(settings, components.engine, components.blobstore)
        jobs = JobQueue(components.engine)
        publisher = Publisher(settings, archive, components.blobstore, jobs, ManifestLedger(components.engine))
        import_files(archive, [DEPT002])

        publication = asyncio.run(publisher.publish(DEPT002_STUDY))
        assert publication.status == ebrim.SUCCESS

    stored = remote.state.components.repository_store.get(publication.document_unique_id)
    assert stored is not None and stored.state == "available" and stored.mime_type == "application/dicom"
    kos = pydicom.dcmread(remote.state.components.blobstore.path(stored.blob_key))
    assert str(kos.SOPInstanceUID) == publication.document_unique_id
    assert components.repository_store.get(publication.document_unique_id) is None  # nothing kept locally
