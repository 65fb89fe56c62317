"""Received C-STORE data sets land in the archive's own folder, behind our File Meta.

With ``STORE_RECV_CHUNKED_DATASET`` on, pynetdicom writes each incoming data set to a file as
its P-DATA fragments arrive: a ``NamedTemporaryFile`` in the system temp folder, starting with
the preamble and a File Meta Information group of its own making. Archiving that file then
meant writing every byte a second time, behind our meta header, into the blob store.

pynetdicom 3 offers no setting for that file's folder or meta header, so this module replaces
the two names its DIMSE message decoder calls for them (``dimse_messages.NamedTemporaryFile``
and ``dimse_messages.write_file_meta_info``). For an association accepted by a registered AE,
the file is created in that AE's landing folder (the archive's ``landing_folder``, on the blob
store's file system) and gets the meta header ``part10.file_meta_bytes`` writes, naming the
requester's AE title; the archive then fsyncs it and gives it its key (``adopt=True``).
Every other association, and any pynetdicom whose decoder no longer has these names, gets
pynetdicom's own behaviour, which the archive handles by copying.

The replacement is installed while at least one AE is registered, like pynetdicom's own
process-wide switch.

Creating a file can cost the file system 0.3 to 0.7 ms (measured on ext4 on a virtual disk),
and pynetdicom creates the landing file only once the C-STORE request has arrived: on the path
of every instance, between the sender's request and our answer. So a background thread keeps a
couple of empty landing files ready in each registered folder, and a data set lands in one of
those. Landing files left behind (a store cut short by an abort, a process killed) are removed
once they are an hour old: when an AE registers the folder, and every ten minutes. A data set
cut short by an abort or a dropped connection goes at once, when its connection closes.

The archive needs the data set's SHA-1 and its index values. Read back from the file once it
was complete, they cost the C-STORE handler about 0.8 ms of a 0.5 MB instance, while the sender
waits for our answer. So each fragment is hashed as it is written, and the data set's first
bytes are kept (``Landed``): the handler reads nothing again. (A thread of its own for the hash
gained nothing: handing it the fragments cost the transport thread as much as hashing them.)
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import queue
import secrets
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from tempfile import NamedTemporaryFile

from pydicom.filewriter import write_file_meta_info
from pynetdicom import dimse_messages

from dicom import part10

log = logging.getLogger(__name__)

_lock = threading.Lock()
_folders: dict[int, ReadyFiles] = {}  # id(AE) -> its landing folder's ready files
_installed = False
_serial = itertools.count()

READY_FILES = 2  # per landing folder; more only matters for many simultaneous associations
LEFTOVER_AGE_SECONDS = 3600  # a landing file this old belongs to no running store
SWEEP_INTERVAL_SECONDS = 600  # the folder is swept this often
RETRY_SECONDS = 5  # after the file system refused a ready file
HEAD_BYTES = 1 << 16  # of a data set's start, kept for its index values

_digests: weakref.WeakValueDictionary[str, DataSetDigest] = weakref.WeakValueDictionary()

# The attribute that marks a landing file, with the requester's AE title as its value.
_SOURCE_AE = "_landing_source_ae_title"


class LandingFile:
    """A landing file, with what pynetdicom uses of its ``NamedTemporaryFile``: ``name``,
    ``write``, ``file.flush`` and ``close`` (it unlinks the name itself afterwards)."""

    def __init__(self, path: Path, descriptor: int):
        self.name = str(path)
        self.file = open(descriptor, "r+b")  # noqa: SIM115 -- pynetdicom closes it
        self.digest: DataSetDigest | None = None  # from the end of our meta header on

    @classmethod
    def create(cls, folder: Path) -> LandingFile:
        # Each name is unique for good, also between processes sharing the folder (in
        # containers they may all be process 1): pynetdicom unlinks the old name after the
        # handler ran, when the archive has already taken the file away under its key.
        while True:
            path = folder / f"c-store-{os.getpid()}-{next(_serial)}-{secrets.token_hex(6)}.dcm"
            try:
                descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # left by an earlier process with the same id
                continue
            try:
                return cls(path, descriptor)
            except BaseException:
                os.close(descriptor)
                path.unlink(missing_ok=True)
                raise

    def is_linked(self) -> bool:
        """False once a clean-up (of another process sharing the folder) removed its name."""
        return os.fstat(self.file.fileno()).st_nlink > 0

    def write(self, data: bytes) -> int:
        written = self.file.write(data)
        if self.digest is not None:
            self.digest.feed(data)
        return written

    def close(self) -> None:
        self.file.close()


@dataclass(frozen=True)
class Landed:
    """A landed data set (the bytes after the meta header): hash, size and first bytes."""

    sha1: str
    size: int
    head: bytes  # the first HEAD_BYTES, or all of a smaller data set


class DataSetDigest:
    """Hash, size and first bytes of a data set, from the fragments ``feed`` gets in order."""

    def __init__(self):
        self._sha1 = hashlib.sha1()
        self._size = 0
        self._head = bytearray()

    def feed(self, data: bytes) -> None:
        self._sha1.update(data)
        self._size += len(data)
        if len(self._head) < HEAD_BYTES:
            self._head += data[:HEAD_BYTES - len(self._head)]

    def result(self) -> Landed:
        return Landed(self._sha1.hexdigest(), self._size, bytes(self._head))


def landed(path: str | os.PathLike) -> Landed | None:
    """The digest of the data set landed at ``path``, once complete; None when there is none
    (not a landing file, or its meta header was not ours)."""
    digest = _digests.get(str(path))
    return digest.result() if digest is not None else None


class ReadyFiles:
    """Empty landing files in ``folder``, at most ``depth``, created and opened ahead of need
    by a background thread (opening costs the transport thread too: 0.1 ms or more while the
    disk is busy syncing)."""

    def __init__(self, folder: Path, depth: int = READY_FILES):
        self.folder = Path(folder)
        self._ready: queue.SimpleQueue[LandingFile] = queue.SimpleQueue()
        self._room = threading.Semaphore(depth)
        self._stopped = False
        self._stop_requested = threading.Event()
        self._filler = threading.Thread(target=self._fill, name="landing-files", daemon=True)
        self._filler.start()

    def take(self) -> LandingFile:
        """A ready file, or a new one when none is ready (or a clean-up removed it)."""
        while True:
            try:
                landing = self._ready.get_nowait()
            except queue.Empty:
                return LandingFile.create(self.folder)
            self._room.release()
            if landing.is_linked():
                return landing
            landing.close()

    def close(self) -> None:
        """Stop the filler and remove the files nobody took."""
        self._stopped = True
        self._stop_requested.set()
        self._room.release()  # wakes the filler if it waits for room
        self._filler.join()
        self._drop_ready()

    def _drop_ready(self) -> None:
        while True:
            try:
                landing = self._ready.get_nowait()
            except queue.Empty:
                return
            self._room.release()
            landing.close()
            Path(landing.name).unlink(missing_ok=True)

    def _fill(self) -> None:
        swept = time.monotonic()
        while True:
            idle = not self._room.acquire(timeout=SWEEP_INTERVAL_SECONDS)
            if self._stopped:
                return
            if idle:
                # The ready files are made anew, so that no sweep (ours or another process's)
                # finds them an hour old.
                self._drop_ready()
            if time.monotonic() - swept >= SWEEP_INTERVAL_SECONDS:
                # Remove what stores cut short and nobody cleaned up (a process killed).
                swept = time.monotonic()
                sweep(self.folder)
            if idle:
                continue
            try:
                self._ready.put(LandingFile.create(self.folder))
            except OSError as exc:  # ``take`` creates files itself meanwhile
                log.warning("landing folder %s: no file made ready (%s)", self.folder, exc)
                self._room.release()
                if self._stop_requested.wait(RETRY_SECONDS):
                    return


def sweep(folder: Path, older_than: float = LEFTOVER_AGE_SECONDS) -> int:
    """Remove landing files older than ``older_than`` seconds; returns how many."""
    removed = 0
    limit = time.time() - older_than
    try:
        for path in Path(folder).glob("c-store-*.dcm"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < limit:
                    path.unlink()
                    removed += 1
    except OSError as exc:  # a folder we may not read or write: the next sweep tries again
        log.warning("landing folder %s: not swept (%s)", folder, exc)
    return removed


def discard_unfinished(assoc) -> None:
    """At the end of a connection: remove the landing file of a data set still arriving (an
    abort, a dropped connection). pynetdicom would leave it, open, for the garbage
    collector; only a sweep an hour later would remove it."""
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    unfinished = getattr(message, "_data_set_file", None)
    if isinstance(unfinished, LandingFile):
        with contextlib.suppress(OSError, ValueError):
            unfinished.close()
        Path(unfinished.name).unlink(missing_ok=True)


def register(ae, folder: Path) -> None:
    """Land C-STORE data sets received by ``ae`` in ``folder``."""
    if removed := sweep(folder):
        log.info("landing folder %s: %d files left by an earlier run removed", folder, removed)
    with _lock:
        earlier = _folders.pop(id(ae), None)
        _folders[id(ae)] = ReadyFiles(folder)
        _install(True)
    if earlier is not None:
        earlier.close()


def ready_files(ae) -> ReadyFiles | None:
    """The landing files of ``ae``'s folder, while it is registered."""
    with _lock:
        return _folders.get(id(ae))


def unregister(ae) -> None:
    with _lock:
        ready = _folders.pop(id(ae), None)
        if not _folders:
            _install(False)
    if ready is not None:
        ready.close()


def _install(on: bool) -> None:
    """Put our two names in pynetdicom's decoder, or its own back. Only when they are what
    pynetdicom 3 imports there: a later pynetdicom keeps its behaviour (and the copy)."""
    global _installed
    if on == _installed:
        return
    ours = {"NamedTemporaryFile": _named_temporary_file,
            "write_file_meta_info": _write_file_meta_info}
    theirs = {"NamedTemporaryFile": NamedTemporaryFile,
              "write_file_meta_info": write_file_meta_info}
    expected, wanted = (theirs, ours) if on else (ours, theirs)
    if all(getattr(dimse_messages, name, None) is value for name, value in expected.items()):
        for name, value in wanted.items():
            setattr(dimse_messages, name, value)
        _installed = on


def _receiving_association():
    """The association whose transport thread is decoding: pynetdicom's DUL thread has it."""
    return getattr(threading.current_thread(), "assoc", None)


def _named_temporary_file(*args, **kwargs):
    assoc = _receiving_association()
    ready = _folders.get(id(getattr(assoc, "ae", None))) if assoc is not None else None
    if ready is None or args or "dir" in kwargs or "prefix" in kwargs:
        return NamedTemporaryFile(*args, **kwargs)

    # pynetdicom writes the file and closes it once the C-STORE handler has returned.
    landing = ready.take()
    setattr(landing, _SOURCE_AE, str(assoc.requestor.ae_title or "").strip())
    return landing


def _write_file_meta_info(fp, file_meta, *args, **kwargs) -> None:
    source_ae_title = fp.__dict__.get(_SOURCE_AE) if hasattr(fp, "__dict__") else None
    if source_ae_title is None:
        write_file_meta_info(fp, file_meta, *args, **kwargs)
        return
    # pynetdicom has written the preamble and "DICM" already.
    meta = part10.file_meta_bytes(str(file_meta.MediaStorageSOPClassUID),
                                  str(file_meta.MediaStorageSOPInstanceUID),
                                  str(file_meta.TransferSyntaxUID), source_ae_title)
    fp.write(meta[len(part10.PREAMBLE):])
    fp.digest = _digests[fp.name] = DataSetDigest()
