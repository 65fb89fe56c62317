"""Blob store: where documents and DICOM instances live, byte for byte.

The local implementation keeps one file per blob under a root folder. Bytes are first written
to a spool file in the store's own ``tmp`` folder (same file system), hashed and counted on
the way, then moved into place with an atomic rename, after an fsync, so a blob is either
wholly present and durable or absent. Nothing is ever held whole in memory.

Keys are opaque strings chosen by the caller (for example ``doc/<sha1>`` or
``dicom/<study>/<series>/<sop>``); only ``[A-Za-z0-9._/-]`` is accepted, never ``..``.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import BinaryIO, Iterator

from soap.spool import Spool

CHUNK = 1 << 20

_KEY = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


class FileBlobStore:
    """Blobs as files under ``root``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._making_folders = threading.Lock()

    def spool(self) -> Spool:
        """A new spool file on the store's file system."""
        return Spool(self.tmp)

    def path(self, key: str) -> Path:
        if not _KEY.match(key) or ".." in key.split("/"):
            raise ValueError(f"invalid blob key {key!r}")
        return self.root / "blobs" / key

    def commit(self, spool: Spool, key: str) -> None:
        """Move a closed spool into place under ``key`` (replacing nothing that differs:
        callers check identity first; a same-key rename is atomic either way)."""
        spool.close()
        self.adopt(spool.path, key)

    def adopt(self, path: str | os.PathLike, key: str) -> None:
        """Move a closed, fsynced file of this store's ``tmp`` folder into place under ``key``."""
        self.move_into_place(path, key)
        self.sync_folder(key)

    def move_into_place(self, path: str | os.PathLike, key: str) -> None:
        """``adopt`` without its last step: the new name is durable only after ``sync_folder``.
        For callers with other work to do while the folder is flushed."""
        target = self._folder_for(key)
        os.replace(path, target)

    def link_into_place(self, path: str | os.PathLike, key: str) -> None:
        """Give the file at ``path`` the name ``key`` too (FileExistsError if it is taken: a
        file is never replaced). The name is durable only after ``sync_folder``."""
        os.link(path, self._folder_for(key))

    def sync_folder(self, key: str) -> None:
        """Make the names in the folder of ``key`` durable (fsync of the folder)."""
        _fsync_dir(self.path(key).parent)

    def _folder_for(self, key: str) -> Path:
        """The path of ``key``, its folders made. A folder made here is made durable in its
        parent at once (new studies and series are rare), so that a durable file name never
        sits in a folder that could itself vanish in a power cut. One writer at a time makes
        folders: a store that finds a folder another has just made waits until that one is
        durable too. (Processes sharing the store do not wait for each other; the file
        system's journal orders a folder's creation before the names made in it.)"""
        target = self.path(key)
        with self._making_folders:
            missing = []
            folder = target.parent
            while not folder.is_dir():
                missing.append(folder)
                folder = folder.parent
            for folder in reversed(missing):
                try:
                    folder.mkdir()
                except FileExistsError:  # made by another process: synced here all the same
                    pass
                _fsync_dir(folder.parent)
        return target

    def put_file(self, source: str | os.PathLike, key: str) -> tuple[str, int]:
        """Copy a file into the store; returns (sha1, size)."""
        with open(source, "rb") as src, self.spool() as spool:
            for chunk in iter(lambda: src.read(CHUNK), b""):
                spool.write(chunk)
            self.commit(spool, key)
        return spool.sha1, spool.size

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def open(self, key: str) -> BinaryIO:
        return open(self.path(key), "rb")

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def iter_bytes(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        with self.open(key) as f:
            for chunk in iter(lambda: f.read(chunk_size), b""):
                yield chunk

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
