"""The Imaging Document Source's publishing: study -> KOS manifest -> RAD-68 -> registry.

A study is published when ``xdsi publish`` asks, or automatically once no instance has arrived
for ``source.publish_delay_seconds``. Each publication is a durable job (``xds.jobs``). When a
study already has a current manifest and has changed since, the new manifest replaces it with an
RPLC association, so the earlier DocumentEntry ends Deprecated in the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from lxml import etree
from starlette.concurrency import run_in_threadpool

from dicom.kos import Reference, build_manifest, write_manifest
from soap.client import SoapClient, SoapTransportError
from soap.faults import SoapFault
from soap.mtom import OutgoingPart, xop_include
from xds import ebrim
from xds.errors import RegistryError, effective_status, parse_registry_response
from xds.jobs import HEARTBEAT_SECONDS, JobQueue, ManifestLedger
from xds.manifest_metadata import StudyFacts, build_provide_and_register
from xds.profile import load_profile

log = logging.getLogger(__name__)

# Errors that say "try again later" rather than "this submission is wrong".
TRANSIENT_ERRORS = {"XDSRegistryNotAvailable", "XDSRegistryBusy", "XDSRepositoryBusy",
                    "XDSRegistryOutOfResources", "XDSRepositoryOutOfResources"}


class PublishError(Exception):
    def __init__(self, detail: str, transient: bool):
        super().__init__(detail)
        self.detail = detail
        self.transient = transient


@dataclass
class Publication:
    document_unique_id: str
    entry_uuid: str
    instance_count: int
    replaced: str | None
    status: str
    errors: list[RegistryError]


@dataclass
class _SpooledManifest:
    path: object
    sha1: str
    size: int


class Publisher:
    def __init__(self, settings, archive, blobstore, jobs: JobQueue, ledger: ManifestLedger, repository=None):
        self.settings = settings
        self.archive = archive
        self.blobstore = blobstore
        self.jobs = jobs
        self.ledger = ledger
        self.repository = repository  # the co-located DocumentRepository, when no repository_url
        self.profile = load_profile(settings.source.profile)
        self.client = SoapClient(timeout=settings.repository.registry_timeout_seconds + 30)

    # Building ------------------------------------------------------------------------------

    def build(self, study_uid: str):
        """The KOS and the ProvideAndRegister request for the study as archived now."""
        study = self.archive.study(study_uid)
        if study is None:
            raise PublishError(f"study {study_uid} is not in the archive", transient=False)
        instances = self.archive.instances_of(study_uid)
        if not instances:
            raise PublishError(f"study {study_uid} has no instances", transient=False)

        header = self.archive.header(instances[0].sop_instance_uid)
        references = [Reference(i.series_instance_uid, i.sop_class_uid, i.sop_instance_uid) for i in instances]
        kos = build_manifest(
            header, references,
            retrieve_ae_title=self.settings.dicom.ae_title,
            retrieve_location_uid=self.settings.source.unique_id,
            retrieve_url_base=f"{self.settings.base_url}/wado-rs",
        )

        previous = self.ledger.current(study_uid)
        entry_uuid = f"urn:uuid:{uuid.uuid4()}"
        request = build_provide_and_register(
            kos, profile=self.profile, study_facts=_study_facts(study, self.archive.series_of(study_uid)),
            document_id=entry_uuid,
            replaces_entry_uuid=previous.entry_uuid if previous else None,
            home_community_id=self.settings.source.home_community_id or None,
        )
        return kos, request, entry_uuid, len(instances), previous

    # Publishing ----------------------------------------------------------------------------

    async def publish(self, study_uid: str) -> Publication:
        kos, request, entry_uuid, count, previous = await run_in_threadpool(self.build, study_uid)
        spool = self.blobstore.spool()
        try:
            spool.write(await run_in_threadpool(_encode, kos))
            spool.close()
            manifest = _SpooledManifest(spool.path, spool.sha1, spool.size)
            status, errors = await self._submit(request, manifest)
        finally:
            spool.discard()  # the repository moved it if it kept it

        if status != ebrim.SUCCESS:
            detail = "; ".join(f"{e.error_code}: {e.code_context}" for e in errors) or status
            raise PublishError(detail, transient=any(e.error_code in TRANSIENT_ERRORS for e in errors))

        document_unique_id = str(kos.SOPInstanceUID)
        self.ledger.record(study_uid, document_unique_id, entry_uuid, count)
        log.info("published study %s as manifest %s (%d instances%s)", study_uid, document_unique_id, count,
                 f", replacing {previous.document_unique_id}" if previous else "")
        return Publication(document_unique_id, entry_uuid, count,
                           previous.document_unique_id if previous else None, status, errors)

    async def _submit(self, request: etree._Element, manifest: _SpooledManifest):
        document = request.find(ebrim.q("xds", "Document"))

        if not self.settings.source.repository_url:
            result = await self.repository.provide_and_register(request, lambda _element: manifest)
            return result.status, result.errors

        # RAD-68 to an external Document Repository: the KOS travels as an MTOM attachment.
        content_id = f"{uuid.uuid4().hex}@xdsi"
        xop_include(document, content_id)
        part = OutgoingPart(content_id=content_id, content_type=ebrim.MIME_DICOM, path=manifest.path)
        try:
            reply = await self.client.call(self.settings.source.repository_url, ebrim.ITI41_ACTION, request,
                                           parts=[part], mtom=True)
        except SoapTransportError as exc:
            return ebrim.FAILURE, [RegistryError("XDSRepositoryBusy", f"repository not reachable: {exc}")]
        except SoapFault as exc:
            return ebrim.FAILURE, [RegistryError("XDSRepositoryError", f"repository SOAP fault: {exc.reason}")]
        response = reply.envelope_root.find(f".//{ebrim.q('rs', 'RegistryResponse')}")
        if response is None:
            return ebrim.FAILURE, [RegistryError("XDSRepositoryError", "repository answer holds no RegistryResponse")]
        status, errors = parse_registry_response(response)
        return effective_status(status, errors), errors

    # The worker ----------------------------------------------------------------------------

    async def run_job(self, job) -> None:
        try:
            publication = await self.publish(job.study_uid)
        except PublishError as exc:
            if exc.transient:
                log.warning("publishing job %s for study %s will be retried: %s", job.id, job.study_uid, exc.detail)
                self.jobs.retry_later(job.id, exc.detail)
            else:
                log.warning("publishing job %s for study %s failed: %s", job.id, job.study_uid, exc.detail)
                self.jobs.fail(job.id, exc.detail)
            return
        except Exception as exc:  # a bug or an unexpected outage: keep the job, try again later
            log.exception("publishing job %s for study %s crashed", job.id, job.study_uid)
            self.jobs.retry_later(job.id, f"internal error: {exc}")
            return

        detail = f"registered manifest {publication.document_unique_id} ({publication.instance_count} instances)"
        if publication.replaced:
            detail += f", replacing {publication.replaced}"
        warnings = [e for e in publication.errors if e.severity == ebrim.SEVERITY_WARNING]
        if warnings:
            detail += "; registry warnings: " + "; ".join(f"{w.error_code}: {w.code_context}" for w in warnings)
        self.jobs.finish(job.id, detail, publication.document_unique_id)

    def queue_stable_studies(self) -> None:
        """Queue studies that changed since their last manifest and have been quiet long enough."""
        delay = self.settings.source.publish_delay_seconds
        if delay <= 0:
            return
        older_than = datetime.now(timezone.utc) - timedelta(seconds=delay)
        for study_uid in self.archive.stable_studies(older_than):
            current = self.ledger.current(study_uid)
            if current is not None:
                study = self.archive.study(study_uid)  # one row: the index keeps the count
                if study is None or study.instance_count == current.instance_count:
                    continue
            if not self.jobs.has_waiting(study_uid):
                self.jobs.enqueue(study_uid, reason="stable")

    async def worker(self, poll_seconds: float = 0.5, scan_seconds: float = 5.0) -> None:
        """Run jobs until cancelled; look for newly stable studies every ``scan_seconds``.
        Beside it, a heartbeat says every HEARTBEAT_SECONDS that a worker runs."""
        worker_id = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        beating = asyncio.create_task(self._heartbeats(worker_id))
        next_scan = 0.0
        try:
            while True:
                next_scan = await self._work(poll_seconds, scan_seconds, next_scan)
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
            with contextlib.suppress(Exception):  # otherwise the row goes stale by itself
                await run_in_threadpool(self.jobs.stop_heartbeat, worker_id)

    async def _heartbeats(self, worker_id: str) -> None:
        while True:
            try:
                await run_in_threadpool(self.jobs.heartbeat, worker_id)
            except Exception:
                log.exception("publishing worker: heartbeat not recorded")
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def _work(self, poll_seconds: float, scan_seconds: float, next_scan: float) -> float:
        """One turn: a scan for stable studies when due, then one job, or a pause when there
        was none. Returns when the next scan is due."""
        try:
            if time.monotonic() >= next_scan:
                await run_in_threadpool(self.queue_stable_studies)
                next_scan = time.monotonic() + min(scan_seconds,
                                                   max(self.settings.source.publish_delay_seconds, 0.5))
            job = await run_in_threadpool(self.jobs.claim)
            if job is not None:
                await self.run_job(job)
                return next_scan
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("publishing worker error")
        await asyncio.sleep(poll_seconds)
        return next_scan


def _encode(kos) -> bytes:
    # The KOS is built in memory (about 300 bytes per referenced instance); encode it whole.
    buffer = io.BytesIO()
    write_manifest(kos, buffer)
    return buffer.getvalue()


def _study_facts(study, series) -> StudyFacts:
    return StudyFacts(
        study_instance_uid=study.study_instance_uid,
        accession_number=study.accession_number or "",
        accession_issuer_oid=getattr(study, "accession_issuer_oid", None) or None,
        modalities=sorted({s.modality for s in series if s.modality}),
        body_parts=sorted({s.body_part_examined for s in series if getattr(s, "body_part_examined", None)}),
        procedure_codes=list(getattr(study, "procedure_codes", None) or []),
        patient_id=study.patient_id,
        issuer_of_patient_id=getattr(study, "issuer_of_patient_id", None) or None,
    )
