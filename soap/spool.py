"""Write-once temporary files that hash (SHA-1) and count what is written to them.

The MTOM reader writes each attachment into a spool as it arrives, so that memory does not
grow with attachment size and the hash and size are known when the last byte lands.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Self


class Spool:
    def __init__(self, directory: str | os.PathLike | None = None):
        fd, name = tempfile.mkstemp(dir=directory, prefix="spool-")
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._sha1 = hashlib.sha1()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._file.write(data)
        self._sha1.update(data)
        self.size += len(data)
        return len(data)

    def close(self) -> None:
        """Flush and fsync, so that a later rename publishes durable bytes."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    @property
    def sha1(self) -> str:
        return self._sha1.hexdigest()

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            self.discard()
