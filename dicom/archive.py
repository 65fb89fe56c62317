"""The archive: DICOM instances as Part 10 files in the blob store, indexed in SQL.

``Archive.store`` is the one way in, for C-STORE and for file import alike:

1. spool the instance (our File Meta Information + the data set bytes as received) into the
   blob store's ``tmp`` folder, hashing the data set bytes on the way, and fsync it;
2. read the index values from its header (never the pixel data);
3. an instance already indexed under that SOP Instance UID is a duplicate when its data set
   hash is the same (nothing is rewritten) and a conflict otherwise (the original is kept);
4. otherwise give the spool its key (a hard link, then a directory fsync) and index it in one
   short transaction, committed once the file and its name are on disk. Only then does
   ``store`` return ``stored``, so the caller may acknowledge.

Each store gets a blob key of its own (``dicom/<study>/<series>/<sop>.<sha1[:16]>.<random>.dcm``):
two stores racing under one SOP Instance UID never touch each other's file; the loser's row
insert fails on the unique constraint and its file is removed.

Safe to share between threads; several processes may share one database and blob store.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import secrets
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import sqlalchemy as sa
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from dicom import index, part10
from dicom.facts import Facts, InvalidInstance, facts_from_head, read_facts
from dicom.records import (
    InstanceRecord,
    SeriesRecord,
    StudyRecord,
    instance_query,
    study_query,
)

if TYPE_CHECKING:
    from dicom.landing import Landed

log = logging.getLogger(__name__)

__all__ = ["Archive", "InstanceRecord", "SeriesRecord", "StoreOutcome", "StoreReceipt",
           "StudyRecord", "UnknownInstance"]

# How many (series UID -> row ids) entries to remember, so that the second and later instances
# of a series cost one INSERT and one UPDATE.
SERIES_CACHE_SIZE = 4096
RETRIES = 5

# The statements run for every instance received, built once: SQLAlchemy then finds their
# compiled form in its cache without rebuilding and hashing a new statement each time.
_EXISTING = sa.select(index.instance.c.sha1, index.instance.c.blob_key).where(
    index.instance.c.sop_instance_uid == sa.bindparam("sop_uid"))
_INSERT_INSTANCE = index.instance.insert()
_COUNT_INSTANCE = index.study.update().where(index.study.c.id == sa.bindparam("study_pk")).values(
    instance_count=index.study.c.instance_count + 1, updated_at=sa.bindparam("now"))

# fsync waits on the disk without the GIL: it runs here while the storing thread hashes, parses
# and indexes, and the storing thread waits for it only where durability must come first.
_flusher = ThreadPoolExecutor(max_workers=4, thread_name_prefix="archive-fsync")
CACHED_HEAD = 1 << 16  # bytes of a stored file left in the page cache (see _release_cache)
CACHE_RELEASE_WAIT = 60.0  # seconds; a file still being hashed after that keeps its cache


class StoreOutcome(str, enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # same SOP Instance UID, same data set bytes: nothing rewritten
    CONFLICT = "conflict"  # same SOP Instance UID, different data set: refused, original kept
    INVALID = "invalid"  # not an archivable data set (unreadable, UIDs missing or malformed)


@dataclass(frozen=True)
class StoreReceipt:
    outcome: StoreOutcome
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    detail: str = ""


@dataclass
class _Spooled:
    """A Part 10 file written in the blob store's tmp folder: durable once ``flushed`` is done
    (None: already durable)."""

    path: Path
    size: int = 0
    sha1: str = ""
    facts: Facts | None = None  # read from the first chunk on the way, when it holds them
    flushed: Future | None = None

    def wait_durable(self) -> None:
        if self.flushed is not None:
            self.flushed.result()


def _flush_and_close(fd: int, hashed: threading.Event) -> None:
    """fsync a duplicated descriptor of a landed file, release its cache once it is hashed
    (not under the hash's feet), and close it."""
    try:
        os.fsync(fd)
        if hashed.wait(CACHE_RELEASE_WAIT):
            _release_cache(fd)
    finally:
        os.close(fd)


def _release_cache(fd: int) -> None:
    """Once an instance is on disk, let the kernel drop its cached pages past the header.

    A study arriving is write-once data: kept in the page cache it only pushes out what is
    read again (the index, the headers), and each new instance then needs fresh pages, which
    costs more than reusing those just released (on a virtual machine, several times the
    write itself). The header stays cached for the publishing step that reads it soon."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, CACHED_HEAD, 0, os.POSIX_FADV_DONTNEED)


def _facts_from_head(chunk: bytes, source: part10.Source, whole: bool) -> Facts | None:
    """The index values from a data set's first chunk; None leaves it to ``read_facts``
    (which also gives the reason when the data set is unreadable)."""
    try:
        return facts_from_head(chunk, source.transfer_syntax_uid, whole=whole)
    except InvalidInstance:
        return None


class UnknownInstance(KeyError):
    """No instance with that SOP Instance UID is archived."""


class Archive:
    def __init__(self, engine: Engine, blobstore):
        self.engine = engine
        self.blobstore = blobstore
        self._series_ids: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._cache_lock = threading.Lock()

    # -- Storing -------------------------------------------------------------------------------

    def store(self, path: str | Path, *, transfer_syntax_uid: str | None = None,
              is_part10: bool = True, source_ae_title: str | None = None) -> StoreOutcome:
        """Archive one instance: a Part 10 file, or a bare data set (then give its syntax)."""
        return self.receive(path, transfer_syntax_uid=transfer_syntax_uid, is_part10=is_part10,
                            source_ae_title=source_ae_title).outcome

    def receive(self, path: str | Path, *, transfer_syntax_uid: str | None = None,
                is_part10: bool = True, source_ae_title: str | None = None,
                expected_sop_instance_uid: str | None = None,
                adopt: bool = False, landed: Landed | None = None) -> StoreReceipt:
        """``store`` with the UIDs and a reason: what the C-STORE SCP needs to answer.

        ``adopt``: the file is in this archive's ``landing_folder`` and the archive takes it
        over: it is moved into place or removed, whatever the outcome. When its File Meta
        Information is ours (written by ``part10.file_meta_bytes``) it is archived as it is,
        without a copy; otherwise it is copied behind our meta header like any other file.
        ``landed``: its data set's hash and index values, already computed as it landed."""
        if not is_part10 and not transfer_syntax_uid:
            raise ValueError("a bare data set needs its transfer_syntax_uid")
        try:
            try:
                source = part10.read_source(path, is_part10=is_part10,
                                            transfer_syntax_uid=transfer_syntax_uid)
            except part10.NotDicom as exc:
                return StoreReceipt(StoreOutcome.INVALID, detail=str(exc))
            if not source.sop_class_uid or not source.sop_instance_uid:
                return StoreReceipt(StoreOutcome.INVALID, detail="no SOP Class or Instance UID")

            if adopt and self._archivable_as_is(path, source, transfer_syntax_uid):
                spooled = self._seal(Path(path), source, landed)
            else:
                spooled = self._spool(path, source, source_ae_title)
            try:
                facts = spooled.facts or read_facts(spooled.path)
                self._check_identity(facts, source, expected_sop_instance_uid)
                facts.instance.update(transfer_syntax_uid=source.transfer_syntax_uid,
                                      sha1=spooled.sha1, size=spooled.size)
                return self._place(spooled, facts)
            except InvalidInstance as exc:
                return StoreReceipt(StoreOutcome.INVALID, source.sop_instance_uid,
                                    detail=str(exc))
            finally:
                spooled.path.unlink(missing_ok=True)  # once placed, the key is the file's name
        finally:
            if adopt:
                Path(path).unlink(missing_ok=True)

    @property
    def landing_folder(self) -> Path:
        """Where a receiver may write incoming files to hand them over with ``adopt=True``:
        the blob store's tmp folder, on the same file system as the blobs."""
        return self.blobstore.tmp

    def _archivable_as_is(self, path, source: part10.Source, transfer_syntax_uid) -> bool:
        """A landed file with our own File Meta Information, which nothing overrides."""
        return (source.implementation_class_uid == part10.IMPLEMENTATION_CLASS_UID
                and transfer_syntax_uid is None
                and self._is_landing_folder(Path(path).parent))

    def _is_landing_folder(self, folder: Path) -> bool:
        # Said as given (the SCP names files in it) before resolving links: no lookups then.
        return folder == self.landing_folder or folder.resolve() == self.landing_folder.resolve()

    def _seal(self, path: Path, source: part10.Source, landed: Landed | None) -> _Spooled:
        """Take a landed Part 10 file as the spool: hash its data set bytes and read the index
        values from its first chunk (or take them from ``landed``), while the disk writes it
        back (fsync in ``_flusher``, on a descriptor of its own, so closing ours or renaming
        the file does not disturb it)."""
        spooled = _Spooled(path)
        hashed = threading.Event()
        with open(path, "rb") as f:
            status = os.fstat(f.fileno())
            descriptor = os.dup(f.fileno())
            try:
                spooled.flushed = _flusher.submit(_flush_and_close, descriptor, hashed)
            except BaseException:  # no worker will close it
                os.close(descriptor)
                raise
            if landed is not None and status.st_size == source.offset + landed.size:
                hashed.set()
                spooled.size, spooled.sha1 = status.st_size, landed.sha1
                spooled.facts = _facts_from_head(landed.head, source,
                                                 whole=landed.size == len(landed.head))
                return spooled
            data_set_hash = hashlib.sha1()
            try:
                f.seek(source.offset)
                first = True
                for chunk in iter(lambda: f.read(part10.CHUNK), b""):
                    if first:
                        spooled.facts = _facts_from_head(chunk, source,
                                                         len(chunk) < part10.CHUNK)
                        first = False
                    data_set_hash.update(chunk)
                    spooled.size += len(chunk)
            finally:
                hashed.set()
        spooled.size += source.offset
        spooled.sha1 = data_set_hash.hexdigest()
        return spooled

    def _spool(self, path, source: part10.Source, source_ae_title) -> _Spooled:
        """Write the Part 10 file into the blob store's tmp folder and fsync it.

        Not through ``blobstore.spool()``: that hashes the whole file, and the hash wanted here
        is of the data set bytes only; one hash per instance instead of two."""
        fd, name = tempfile.mkstemp(dir=self.blobstore.tmp, prefix="dicom-", suffix=".dcm")
        spooled = _Spooled(Path(name))
        data_set_hash = hashlib.sha1()
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as source_file:
                meta = part10.file_meta_bytes(source.sop_class_uid, source.sop_instance_uid,
                                              source.transfer_syntax_uid, source_ae_title)
                out.write(meta)
                spooled.size = len(meta)
                source_file.seek(source.offset)
                first = True
                for chunk in iter(lambda: source_file.read(part10.CHUNK), b""):
                    if first:
                        spooled.facts = _facts_from_head(chunk, source, len(chunk) < part10.CHUNK)
                        first = False
                    out.write(chunk)
                    data_set_hash.update(chunk)
                    spooled.size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
                _release_cache(out.fileno())
        except BaseException:
            spooled.path.unlink(missing_ok=True)
            raise
        spooled.sha1 = data_set_hash.hexdigest()
        return spooled

    @staticmethod
    def _check_identity(facts: Facts, source: part10.Source, expected: str | None) -> None:
        # The command (or meta header) and the data set must name the same instance.
        for named in (source.sop_instance_uid, expected):
            if named is not None and named != facts.sop_instance_uid:
                raise InvalidInstance(f"the data set's SOP Instance UID {facts.sop_instance_uid} "
                                      f"differs from the announced {named}")
        if source.sop_class_uid != facts.instance["sop_class_uid"]:
            raise InvalidInstance(f"the data set's SOP Class UID {facts.instance['sop_class_uid']} "
                                  f"differs from the announced {source.sop_class_uid}")

    def _place(self, spool: _Spooled, facts: Facts) -> StoreReceipt:
        """Put the spool in place and index it, unless the SOP Instance UID is indexed.

        The look-up, the placing and the rows share one transaction (one connection, one
        commit); the file is placed before the rows are written, and the commit waits until the
        disk has the file and its name, so a committed row always names a durable file. A
        duplicate never waits: its landed copy is removed.

        Each store gets a key of its own (two copies of one instance differ at least in the
        meta header naming their sender): a file at a key is never replaced, and a store that
        fails removes only its own file."""
        sop_uid, sha1 = facts.sop_instance_uid, facts.instance["sha1"]
        key = (f"dicom/{facts.study_uid}/{facts.series_uid}/"
               f"{sop_uid}.{sha1[:16]}.{secrets.token_hex(4)}.dcm")
        placed, folder_synced, committing = False, None, False
        try:
            for _attempt in range(RETRIES):
                try:
                    with self.engine.begin() as connection:
                        existing = self._existing(connection, sop_uid)
                        if existing is None:
                            if not placed:
                                self.blobstore.link_into_place(spool.path, key)
                                placed = True
                                folder_synced = _flusher.submit(self.blobstore.sync_folder, key)
                                facts.instance["blob_key"] = key
                            ids = self._index(connection, facts)
                            # Before the commit: the file's bytes and name on disk.
                            spool.wait_durable()
                            folder_synced.result()
                            committing = True  # an error from here on may follow a commit
                except IntegrityError:
                    # Another writer inserted the same instance, or the same patient, study or
                    # series row first: look again with fresh state.
                    self._forget(facts.series_uid)
                    committing = False
                    continue
                if existing is None:
                    self._remember(facts.series_uid, ids)
                    return StoreReceipt(StoreOutcome.STORED, sop_uid, facts.study_uid)
                if placed:
                    self.blobstore.delete(key)
                return self._repeat(existing, facts)
            raise RuntimeError(f"could not index instance {sop_uid} after {RETRIES} attempts")
        except BaseException:
            if committing:
                # The commit itself failed: the database may still have completed it (a lost
                # answer), so the file stays; unnamed, it is only unused space.
                log.warning("instance %s: commit failed, file %s kept", sop_uid, key)
            elif placed:
                self._unplace(sop_uid, key)
            raise

    def _unplace(self, sop_uid: str, key: str) -> None:
        """After a failure: remove our placed file, unless a row names it after all (a commit
        whose answer was lost) or the index cannot be asked (then an unnamed file is left,
        which is harmless, rather than a row without its file)."""
        try:
            with self.engine.connect() as connection:
                existing = self._existing(connection, sop_uid)
        except Exception:  # noqa: BLE001 - the original error is what the caller gets
            log.warning("instance %s: file %s kept, the index could not tell whether it is "
                        "named", sop_uid, key)
            return
        if existing is None or existing[1] != key:
            self.blobstore.delete(key)

    @staticmethod
    def _existing(connection: Connection, sop_uid: str) -> tuple[str, str] | None:
        """(sha1, blob key) of the instance already indexed under ``sop_uid``."""
        row = connection.execute(_EXISTING, {"sop_uid": sop_uid}).first()
        return tuple(row) if row else None

    def _repeat(self, existing: tuple[str, str], facts: Facts) -> StoreReceipt:
        sop_uid = facts.sop_instance_uid
        if existing[0] == facts.instance["sha1"]:
            log.debug("instance %s already archived with the same content", sop_uid)
            return StoreReceipt(StoreOutcome.DUPLICATE, sop_uid, facts.study_uid)
        log.warning("instance %s refused: archived already with other data set bytes, so "
                    "different content (a sender that re-encodes it, or drops an element such "
                    "as trailing padding, sends other bytes); the first copy is kept", sop_uid)
        return StoreReceipt(StoreOutcome.CONFLICT, sop_uid, facts.study_uid,
                            "archived already with other data set bytes: first copy kept")

    def _index(self, connection: Connection, facts: Facts) -> tuple[int, int]:
        """In the caller's transaction: the patient, study and series rows if new, the instance
        row, and the study's count and time of last change. Returns (study, series) row ids,
        to remember once committed."""
        now = datetime.now(UTC)
        ids = self._cached(facts.series_uid)
        if ids is None:
            ids = self._parents(connection, facts, now)
        study_pk, series_pk = ids
        connection.execute(_INSERT_INSTANCE, {**facts.instance, "series_fk": series_pk,
                                              "received_at": now})
        connection.execute(_COUNT_INSTANCE, {"study_pk": study_pk, "now": now})
        return ids

    def _parents(self, connection: Connection, facts: Facts, now: datetime) -> tuple[int, int]:
        patient_pk = self._patient(connection, facts.patient)

        study_pk = connection.execute(sa.select(index.study.c.id).where(
            index.study.c.study_instance_uid == facts.study_uid)).scalar()
        if study_pk is None:
            study_pk = connection.execute(index.study.insert().values(
                **facts.study, patient_fk=patient_pk, created_at=now, updated_at=now,
                instance_count=0)).inserted_primary_key[0]

        series_pk = connection.execute(sa.select(index.series.c.id).where(
            index.series.c.series_instance_uid == facts.series_uid)).scalar()
        if series_pk is None:
            series_pk = connection.execute(index.series.insert().values(
                **facts.series, study_fk=study_pk)).inserted_primary_key[0]
            self._refresh_study_summary(connection, study_pk)
        return study_pk, series_pk

    @staticmethod
    def _patient(connection: Connection, values: dict) -> int:
        """The patient row for (Patient ID, issuer); demographics follow the latest instance."""
        table = index.patient
        row = connection.execute(sa.select(table).where(
            table.c.patient_id == values["patient_id"],
            table.c.issuer_of_patient_id == values["issuer_of_patient_id"])).mappings().first()
        if row is None:
            return connection.execute(table.insert().values(**values)).inserted_primary_key[0]
        changed = {k: v for k, v in values.items() if v is not None and row[k] != v}
        if changed:
            connection.execute(table.update().where(table.c.id == row["id"]).values(**changed))
        return row["id"]

    @staticmethod
    def _refresh_study_summary(connection: Connection, study_pk: int) -> None:
        """Modalities and body parts of a study: the distinct values over its series."""
        rows = connection.execute(sa.select(index.series.c.modality,
                                            index.series.c.body_part_examined)
                                  .where(index.series.c.study_fk == study_pk)).all()
        modalities = sorted({r[0] for r in rows if r[0]})
        body_parts = sorted({r[1] for r in rows if r[1]})
        connection.execute(index.study.update().where(index.study.c.id == study_pk).values(
            modalities="\\".join(modalities) or None, body_parts="\\".join(body_parts) or None))

    def _cached(self, series_uid: str) -> tuple[int, int] | None:
        with self._cache_lock:
            ids = self._series_ids.get(series_uid)
            if ids is not None:
                self._series_ids.move_to_end(series_uid)
            return ids

    def _remember(self, series_uid: str, ids: tuple[int, int]) -> None:
        with self._cache_lock:
            self._series_ids[series_uid] = ids
            while len(self._series_ids) > SERIES_CACHE_SIZE:
                self._series_ids.popitem(last=False)

    def _forget(self, series_uid: str) -> None:
        with self._cache_lock:
            self._series_ids.pop(series_uid, None)

    # -- Reading -------------------------------------------------------------------------------

    def instance(self, sop_instance_uid: str) -> InstanceRecord | None:
        statement = instance_query().where(index.instance.c.sop_instance_uid == sop_instance_uid)
        with self.engine.connect() as connection:
            row = connection.execute(statement).mappings().first()
        return InstanceRecord.from_row(row) if row else None

    def is_durable(self, sop_instance_uid: str) -> bool:
        """True if the instance is indexed and its file is in the blob store."""
        record = self.instance(sop_instance_uid)
        return record is not None and self.blobstore.exists(record.blob_key)

    def study(self, study_uid: str) -> StudyRecord | None:
        statement = study_query().where(index.study.c.study_instance_uid == study_uid)
        with self.engine.connect() as connection:
            row = connection.execute(statement).mappings().first()
        return StudyRecord.from_row(row) if row else None

    def studies(self, *, patient_id: str | None = None, limit: int | None = None
                ) -> list[StudyRecord]:
        """Archived studies, the most recently changed first."""
        statement = study_query().order_by(index.study.c.updated_at.desc(), index.study.c.id)
        if patient_id is not None:
            statement = statement.where(index.patient.c.patient_id == patient_id)
        if limit is not None:
            statement = statement.limit(limit)
        with self.engine.connect() as connection:
            return [StudyRecord.from_row(r) for r in connection.execute(statement).mappings()]

    def series_of(self, study_uid: str) -> list[SeriesRecord]:
        s, st, i = index.series, index.study, index.instance
        statement = (sa.select(s, st.c.study_instance_uid,
                               sa.select(sa.func.count()).where(i.c.series_fk == s.c.id)
                               .scalar_subquery().label("instance_count"))
                     .join(st, s.c.study_fk == st.c.id)
                     .where(st.c.study_instance_uid == study_uid)
                     .order_by(s.c.series_number, s.c.series_instance_uid))
        with self.engine.connect() as connection:
            return [SeriesRecord.from_row(r) for r in connection.execute(statement).mappings()]

    def instances_of(self, study_uid: str, series_uid: str | None = None
                     ) -> list[InstanceRecord]:
        """Instances of a study (or of one of its series), in series then instance order."""
        statement = instance_query().where(index.study.c.study_instance_uid == study_uid)
        if series_uid is not None:
            statement = statement.where(index.series.c.series_instance_uid == series_uid)
        statement = statement.order_by(
            index.series.c.series_number, index.series.c.series_instance_uid,
            index.instance.c.instance_number, index.instance.c.sop_instance_uid)
        with self.engine.connect() as connection:
            return [InstanceRecord.from_row(r) for r in connection.execute(statement).mappings()]

    def open_instance(self, sop_instance_uid: str) -> BinaryIO:
        """The stored Part 10 file, opened for binary reading."""
        record = self.instance(sop_instance_uid)
        if record is None:
            raise UnknownInstance(sop_instance_uid)
        return self.blobstore.open(record.blob_key)

    def header(self, sop_instance_uid: str) -> Dataset:
        """The stored instance's data set up to (not including) its pixel data."""
        with self.open_instance(sop_instance_uid) as f:
            return dcmread(f, stop_before_pixels=True)

    def stable_studies(self, older_than: datetime) -> list[str]:
        """Study Instance UIDs that received no instance since ``older_than``."""
        if older_than.tzinfo is not None:
            older_than = older_than.astimezone(UTC)
        if self.engine.dialect.name == "sqlite":
            older_than = older_than.replace(tzinfo=None)  # SQLite keeps UTC wall-clock text
        statement = (sa.select(index.study.c.study_instance_uid)
                     .where(index.study.c.updated_at < older_than)
                     .order_by(index.study.c.updated_at))
        with self.engine.connect() as connection:
            return list(connection.execute(statement).scalars())
