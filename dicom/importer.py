"""Archive DICOM files and folders without the network (``xdsi import PATH...``).

Every regular file under the given paths is tried; a file that is not a DICOM Part 10 file is
counted and skipped, never fatal. Files go through ``Archive.store`` one at a time, exactly as a
C-STORE would, so memory does not grow with the number or size of the files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dicom.archive import Archive, StoreOutcome
from dicom.part10 import is_part10

log = logging.getLogger(__name__)


@dataclass
class ImportSummary:
    stored: int = 0
    duplicate: int = 0
    conflict: int = 0
    invalid: int = 0  # Part 10 files that could not be archived (broken, UIDs missing)
    not_dicom: int = 0
    studies: set[str] = field(default_factory=set)

    @property
    def files(self) -> int:
        return self.stored + self.duplicate + self.conflict + self.invalid + self.not_dicom

    def __str__(self) -> str:
        return (f"{self.files} files: {self.stored} stored, {self.duplicate} duplicate, "
                f"{self.conflict} conflict, {self.invalid} invalid, {self.not_dicom} not DICOM; "
                f"{len(self.studies)} studies touched")


def iter_files(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Regular files named, or found under the folders named, in a stable order."""
    for path in map(Path, paths):
        if path.is_dir():
            for folder, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield Path(folder) / name
        elif path.is_file():
            yield path
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")


def import_paths(paths: Iterable[str | os.PathLike], archive: Archive,
                 progress: Callable[[int, int | None], None] | None = None) -> ImportSummary:
    """Archive every DICOM file under ``paths``; ``progress(done, total)`` after each file."""
    files = list(iter_files(paths))  # paths only: lets the progress display show a total
    summary = ImportSummary()
    for done, path in enumerate(files, start=1):
        _import_one(path, archive, summary)
        if progress is not None:
            progress(done, len(files))
    log.debug("import: %s", summary)  # the caller tells the user
    return summary


def _import_one(path: Path, archive: Archive, summary: ImportSummary) -> None:
    try:
        part10 = is_part10(path)
    except OSError as exc:
        log.warning("import: cannot read %s: %s", path, exc)
        summary.not_dicom += 1
        return
    if not part10:
        log.debug("import: %s is not a DICOM Part 10 file", path)
        summary.not_dicom += 1
        return

    receipt = archive.receive(path, is_part10=True)
    if receipt.outcome is StoreOutcome.STORED:
        summary.stored += 1
    elif receipt.outcome is StoreOutcome.DUPLICATE:
        summary.duplicate += 1
    elif receipt.outcome is StoreOutcome.CONFLICT:
        summary.conflict += 1
        log.warning("import: %s refused: %s", path, receipt.detail)
    else:
        summary.invalid += 1
        log.warning("import: %s not archived: %s", path, receipt.detail)
    if receipt.study_instance_uid and receipt.outcome is not StoreOutcome.INVALID:
        summary.studies.add(receipt.study_instance_uid)
