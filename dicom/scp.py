"""The DICOM application entity: C-ECHO, C-STORE, Storage Commitment, and Q/R.

- C-STORE SCP for every storage SOP class pynetdicom knows, in every transfer syntax it knows
  (uncompressed, deflated, JPEG, JPEG-LS, JPEG 2000, RLE, ...). Each incoming data set is
  written to a landing file behind our File Meta Information as its P-DATA fragments arrive,
  so memory does not grow with the instance size: by the transport thread itself
  (``dicom.direct_store``), or by pynetdicom (``STORE_RECV_CHUNKED_DATASET``, ``dicom.landing``)
  for what that path does not take. ``Archive.receive`` fsyncs the file, gives it its key,
  indexes it, and only then do we answer Success.
- Storage Commitment Push Model SCP (PS3.4 Annex J): the N-ACTION is answered at once, then an
  N-EVENT-REPORT lists what is durable and what is not (event type 1 all committed, 2 some
  failed). It goes on the same association if still open, else on a new association to the
  requester's address from ``peers``.
- C-FIND / C-MOVE / C-GET: the handlers of ``dicom.qr``, bound in ``_handlers``.

Every handler is registered in ``DicomServer._handlers``: add new services there.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom._uid_dict import UID_dictionary
from pydicom.dataset import Dataset
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    _config,
    evt,
)
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification, register_uid

from dicom import direct_store, landing, tuning
from dicom.archive import Archive, StoreOutcome

log = logging.getLogger(__name__)

# The well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.5).
COMMITMENT_INSTANCE_UID = "1.2.840.10008.1.20.1.1"
REQUEST_STORAGE_COMMITMENT = 1  # N-ACTION Action Type ID
EVENT_ALL_COMMITTED = 1  # N-EVENT-REPORT Event Type IDs
EVENT_SOME_FAILED = 2

SUCCESS = 0x0000
# A SOP Instance UID already archived with different content is refused with 0x0110
# "Processing failure" and an Error Comment: the data set was understood (so not 0xCxxx "Cannot
# understand") and matches its SOP class (not 0xA900), and no resource ran out (not 0xA7xx);
# what failed is the archive's rule never to replace a stored instance silently (PS3.7 C.4.2).
PROCESSING_FAILURE = 0x0110
CANNOT_UNDERSTAND = 0xC000  # the data set is unreadable, or its UIDs are missing or malformed
OUT_OF_RESOURCES = 0xA700  # the disk is full
MISSING_ATTRIBUTE = 0x0120
NO_SUCH_ACTION = 0x0123

# Failure Reasons of a Failed SOP Sequence item (PS3.4 J.3.2.1.1.2).
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119

# Before using the requester's own association for the report, give a release that follows the
# N-ACTION response at once the time to arrive; then wait at most REPORT_TIMEOUT for its answer
# (a requester that is releasing never answers) before falling back to a new association.
RELEASE_GRACE = 0.1
REPORT_TIMEOUT = 5.0

# What requesters may send in one PDU: 4 MiB, a few PDUs per image and a bounded buffer.
MAX_PDU = tuning.MAX_PDU_LENGTH

_chunked_lock = threading.Lock()
_chunked_users = 0


@dataclass
class _AssociationLog:
    """What one association did, for one INFO line when it ends."""

    stored: int = 0
    duplicate: int = 0
    refused: int = 0
    studies: set[str] = field(default_factory=set)


def storage_sop_classes() -> list[str]:
    """Every composite storage SOP class: pynetdicom's, plus those it leaves out (retired ones
    such as the old Ultrasound Multi-frame Image Storage that real archives still hold), which
    are registered with pynetdicom's Storage service class here."""
    known = [context.abstract_syntax for context in AllStoragePresentationContexts]
    extra = []
    for uid, (name, kind, _info, _retired, keyword) in UID_dictionary.items():
        if (kind == "SOP Class" and uid.startswith("1.2.840.10008.5.1.4.1.1.")
                and "Storage" in name and uid not in known and keyword.isidentifier()):
            register_uid(uid, keyword, StorageServiceClass)
            extra.append(uid)
    return known + extra


class DicomServer:
    def __init__(self, archive: Archive, ae_title: str = "XDSI", host: str = "127.0.0.1",
                 port: int = 11112, on_stored: Callable[[str], None] | None = None,
                 move_destinations: dict[str, tuple[str, int]] | None = None,
                 peers: dict[str, tuple[str, int]] | None = None):
        """``on_stored(study_uid)`` is called once per study that received new instances,
        when the association ends. ``move_destinations`` are the C-MOVE destinations;
        ``peers`` (AE title -> host, port) are where a commitment report goes when the
        requester's association has closed (the move destinations are used too)."""
        self.archive = archive
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self.on_stored = on_stored
        self.move_destinations = dict(move_destinations or {})
        self.peers = {**self.move_destinations, **(peers or {})}
        self._server = None
        self._associations: dict[int, _AssociationLog] = {}
        self._lock = threading.Lock()
        # Received data sets are written straight into the archive's landing folder and then
        # renamed into place, rather than written to the system temp folder and copied.
        self._landing_folder: Path | None = getattr(archive, "landing_folder", None)
        self._storage_classes: frozenset[str] = frozenset()
        self.ae = self._make_ae()

    # -- Set-up --------------------------------------------------------------------------------

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = MAX_PDU
        ae.add_supported_context(Verification)
        storage_classes = storage_sop_classes()
        self._storage_classes = frozenset(storage_classes)
        for sop_class in storage_classes:
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(StorageCommitmentPushModel)
        try:
            from dicom.qr import add_query_retrieve_contexts
        except ImportError:  # Q/R not available: storage only
            pass
        else:
            add_query_retrieve_contexts(ae)
        return ae

    def _handlers(self) -> list[tuple]:
        """Every event this AE answers, in one place."""
        handlers = [
            (evt.EVT_CONN_OPEN, tuning.tune_association),
            (evt.EVT_CONN_OPEN, self._take_stores),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_CONN_CLOSE, self._on_closed),
            (evt.EVT_C_ECHO, lambda event: SUCCESS),
            (evt.EVT_C_STORE, self._on_c_store),
            (evt.EVT_N_ACTION, self._on_n_action),
        ]
        try:
            from dicom.qr import query_retrieve_handlers
        except ImportError:
            return handlers
        return handlers + query_retrieve_handlers(self.archive, self.move_destinations)

    def start(self) -> None:
        """Listen in background threads (one per association)."""
        _use_chunked_receive(True)
        if self._landing_folder is not None:
            landing.register(self.ae, self._landing_folder)
        try:
            self._server = self.ae.start_server((self.host, self.port), block=False,
                                                evt_handlers=self._handlers())
        except BaseException:  # the port is taken, say: leave nothing running behind
            landing.unregister(self.ae)
            _use_chunked_receive(False)
            raise
        tuning.copy_contexts_cheaply(self._server)
        tuning.read_uids_once()
        log.info("DICOM AE %s listening on %s:%d", self.ae_title, self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
            landing.unregister(self.ae)
            _use_chunked_receive(False)

    # -- Association bookkeeping -------------------------------------------------------------

    def _on_established(self, event) -> None:
        with self._lock:
            self._associations[id(event.assoc)] = _AssociationLog()

    def _on_closed(self, event) -> None:
        with contextlib.suppress(OSError):  # the sweep removes it later
            landing.discard_unfinished(event.assoc)
        with self._lock:
            record = self._associations.pop(id(event.assoc), None)
        if record is None:
            return
        requestor = event.assoc.requestor
        log.info("association from %s (%s) to %s ended: %d stored, %d duplicate, %d refused",
                 requestor.ae_title, requestor.address, self.ae_title, record.stored,
                 record.duplicate, record.refused)
        if self.on_stored is not None:
            for study_uid in sorted(record.studies):
                try:
                    self.on_stored(study_uid)
                except Exception:
                    log.exception("on_stored callback failed for study %s", study_uid)

    def _count(self, assoc, outcome: StoreOutcome, study_uid: str | None) -> None:
        with self._lock:
            record = self._associations.get(id(assoc))
            if record is None:
                return
            if outcome is StoreOutcome.STORED:
                record.stored += 1
                if study_uid:
                    record.studies.add(study_uid)
            elif outcome is StoreOutcome.DUPLICATE:
                record.duplicate += 1
            else:
                record.refused += 1

    # -- C-STORE -------------------------------------------------------------------------------

    def _take_stores(self, event) -> None:
        """C-STORE requests on this connection are read and answered by its transport thread
        (``dicom.direct_store``), when the data sets land in the archive's own folder."""
        ready = landing.ready_files(self.ae)
        if ready is not None:
            direct_store.install(event.assoc, ready, self._store, self._storage_classes)

    def _on_c_store(self, event):
        """EVT_C_STORE: the requests pynetdicom decoded itself, those ``direct_store`` did not
        take; landed in our folder, or in pynetdicom's temporary file."""
        path = Path(event.dataset_path)
        ours = path.parent == self._landing_folder
        request = direct_store.StoreRequest(
            event.assoc, str(event.request.AffectedSOPClassUID),
            str(event.request.AffectedSOPInstanceUID), path,
            landing.landed(path) if ours else None)
        return self._store(request, adopt=ours)

    def _store(self, request: direct_store.StoreRequest, adopt: bool = True):
        """Archive a received data set; returns the C-STORE status (a Dataset for a failure,
        with its Error Comment)."""
        sop_uid = request.sop_instance_uid
        if request.write_error is not None:  # logged where it happened
            return _not_archived(request.write_error)
        try:
            receipt = self.archive.receive(
                request.path, is_part10=True, source_ae_title=request.assoc.requestor.ae_title,
                expected_sop_instance_uid=sop_uid, adopt=adopt, landed=request.landed)
        except OSError as exc:
            log.error("C-STORE of %s failed: %s", sop_uid, exc)
            return _not_archived(exc)
        except Exception as exc:
            log.exception("C-STORE of %s failed", sop_uid)
            return _failure(PROCESSING_FAILURE, f"instance not archived: {exc}")

        self._count(request.assoc, receipt.outcome, receipt.study_instance_uid)
        log.debug("C-STORE %s: %s", sop_uid, receipt.outcome.value)
        if receipt.outcome in (StoreOutcome.STORED, StoreOutcome.DUPLICATE):
            return SUCCESS
        if receipt.outcome is StoreOutcome.CONFLICT:
            return _failure(PROCESSING_FAILURE, receipt.detail, offending=0x00080018)
        log.warning("C-STORE %s refused: %s", sop_uid, receipt.detail)
        return _failure(CANNOT_UNDERSTAND, receipt.detail)

    # -- Storage Commitment --------------------------------------------------------------------

    def _on_n_action(self, event):
        if event.request.RequestedSOPClassUID != StorageCommitmentPushModel:
            return NO_SUCH_ACTION, None
        if event.action_type != REQUEST_STORAGE_COMMITMENT:
            return NO_SUCH_ACTION, None
        request = event.action_information
        if "TransactionUID" not in request or "ReferencedSOPSequence" not in request:
            return MISSING_ATTRIBUTE, None

        references = [(str(item.get("ReferencedSOPClassUID", "")),
                       str(item.get("ReferencedSOPInstanceUID", "")))
                      for item in request.ReferencedSOPSequence]
        transaction_uid = str(request.TransactionUID)
        log.info("storage commitment %s from %s: %d instance(s)", transaction_uid,
                 event.assoc.requestor.ae_title, len(references))
        # The report may only go out after this N-ACTION's response: pynetdicom sends that
        # when this handler returns, and send_n_event_report waits for the reactor to pause.
        threading.Thread(target=self._report_commitment, name=f"commit-{transaction_uid}",
                         args=(event.assoc, transaction_uid, references), daemon=True).start()
        return SUCCESS, None

    def commitment_report(self, transaction_uid: str,
                          references: list[tuple[str, str]]) -> tuple[int, Dataset]:
        """The N-EVENT-REPORT event type and information for the listed instances."""
        committed, failed = [], []
        for sop_class, sop_instance in references:
            record = self.archive.instance(sop_instance) if sop_instance else None
            if record is None:
                failed.append((sop_class, sop_instance, NO_SUCH_OBJECT_INSTANCE))
            elif record.sop_class_uid != sop_class:
                failed.append((sop_class, sop_instance, CLASS_INSTANCE_CONFLICT))
            elif not self.archive.is_durable(sop_instance):
                failed.append((sop_class, sop_instance, PROCESSING_FAILURE))
            else:
                committed.append((sop_class, sop_instance))

        info = Dataset()
        info.TransactionUID = transaction_uid
        info.RetrieveAETitle = self.ae_title
        info.ReferencedSOPSequence = [_reference(c, i) for c, i in committed]
        if failed:
            items = []
            for sop_class, sop_instance, reason in failed:
                item = _reference(sop_class, sop_instance)
                item.FailureReason = reason
                items.append(item)
            info.FailedSOPSequence = items
        return (EVENT_SOME_FAILED if failed else EVENT_ALL_COMMITTED), info

    def _report_commitment(self, assoc, transaction_uid: str, references) -> None:
        event_type, info = self.commitment_report(transaction_uid, references)
        failed = len(info.get("FailedSOPSequence", []))
        log.info("storage commitment %s: %d committed, %d failed", transaction_uid,
                 len(info.ReferencedSOPSequence), failed)

        time.sleep(RELEASE_GRACE)
        if assoc.is_established:
            previous, assoc.dimse_timeout = assoc.dimse_timeout, REPORT_TIMEOUT
            try:
                if _send_report(assoc, event_type, info):
                    return
            finally:
                assoc.dimse_timeout = previous
        requestor = assoc.requestor.ae_title
        address = self.peers.get(requestor.strip())
        if address is None:
            log.warning("storage commitment %s: the association has closed and %s is not a "
                        "configured peer; the report is not delivered", transaction_uid, requestor)
            return
        self._report_on_new_association(requestor, address, event_type, info)

    def _report_on_new_association(self, ae_title: str, address: tuple[str, int],
                                   event_type: int, info: Dataset) -> None:
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(StorageCommitmentPushModel)
        # We are the commitment SCP opening the association: ask for that role (PS3.4 J.3.3).
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = StorageCommitmentPushModel
        role.scu_role = False
        role.scp_role = True
        assoc = ae.associate(address[0], address[1], ae_title=ae_title, ext_neg=[role],
                             evt_handlers=[(evt.EVT_CONN_OPEN, tuning.tune_association)])
        if not assoc.is_established:
            log.warning("storage commitment %s: %s at %s:%d refused or unreachable",
                        info.TransactionUID, ae_title, *address)
            return
        try:
            _send_report(assoc, event_type, info)
        finally:
            assoc.release()


def _send_report(assoc, event_type: int, info: Dataset) -> bool:
    try:
        status, _ = assoc.send_n_event_report(info, event_type, StorageCommitmentPushModel,
                                              COMMITMENT_INSTANCE_UID)
    except Exception as exc:  # noqa: BLE001 - no context, association gone, encoding error
        log.warning("storage commitment %s: report not sent: %s", info.TransactionUID, exc)
        return False
    if "Status" not in status:
        return False
    if status.Status != SUCCESS:
        log.warning("storage commitment %s: the requester answered 0x%04X",
                    info.TransactionUID, status.Status)
    return True


def _reference(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def _not_archived(exc: OSError) -> Dataset:
    status = OUT_OF_RESOURCES if exc.errno in (errno.ENOSPC, errno.EDQUOT) else PROCESSING_FAILURE
    return _failure(status, f"instance not archived: {exc.strerror or exc}")


def _failure(status: int, comment: str, offending: int | None = None) -> Dataset:
    response = Dataset()
    response.Status = status
    response.ErrorComment = comment[:64]  # Error Comment is LO
    if offending is not None:
        response.OffendingElement = [offending]
    return response


def _use_chunked_receive(on: bool) -> None:
    """pynetdicom's switch is process-wide: on while any server runs, as it was after.

    pynetdicom's own event logging goes too while a server runs: a line at INFO for every
    instance received ("Received Store Request"), and handlers called for every PDU, when our
    log has a line per association with its counts."""
    global _chunked_users
    with _chunked_lock:
        _chunked_users += 1 if on else -1
        _config.STORE_RECV_CHUNKED_DATASET = _chunked_users > 0
        _config.LOG_HANDLER_LEVEL = "none" if _chunked_users > 0 else "standard"
