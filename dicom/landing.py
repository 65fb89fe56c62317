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
requester's AE title; the archive then fsyncs it and renames it into place (``adopt=True``).
Every other association, and any pynetdicom whose decoder no longer has these names, gets
pynetdicom's own behaviour, which the archive handles by copying.

The replacement is installed while at least one AE is registered, like pynetdicom's own
process-wide switch.
"""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path
from tempfile import NamedTemporaryFile

from pydicom.filewriter import write_file_meta_info
from pynetdicom import dimse_messages

from dicom import part10

_lock = threading.Lock()
_folders: dict[int, Path] = {}  # id(AE) -> landing folder
_installed = False
_serial = itertools.count()

# The attribute that marks a landing file, with the requester's AE title as its value.
_SOURCE_AE = "_landing_source_ae_title"


def register(ae, folder: Path) -> None:
    """Land C-STORE data sets received by ``ae`` in ``folder``."""
    with _lock:
        _folders[id(ae)] = Path(folder)
        _install(True)


def unregister(ae) -> None:
    with _lock:
        _folders.pop(id(ae), None)
        if not _folders:
            _install(False)


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
    folder = _folders.get(id(getattr(assoc, "ae", None))) if assoc is not None else None
    if folder is None or args or "dir" in kwargs or "prefix" in kwargs:
        return NamedTemporaryFile(*args, **kwargs)

    # The process id and a counter make each name unique for good: pynetdicom unlinks the old
    # name after the handler ran, when the archive has already renamed the file into place.
    prefix = f"c-store-{os.getpid()}-{next(_serial)}-"
    # pynetdicom writes the file and closes it once the C-STORE handler has returned.
    landing = NamedTemporaryFile(dir=folder, prefix=prefix, **kwargs)  # noqa: SIM115
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
