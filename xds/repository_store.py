"""The Document Repository's own index: one row per stored document.

A row is written ``pending`` before the bytes are moved into the blob store and before the
registry is asked (ITI-42); it becomes ``available`` only once the registry accepted the
submission. ITI-43 serves available documents only, so a document whose registration failed is
never retrievable. The primary key on ``unique_id`` is what stops two processes from storing
different bytes under one uniqueId at the same time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import Column, DateTime, Integer, String, Table, delete, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from xds.db import metadata

PENDING = "pending"
AVAILABLE = "available"

repository_document = Table(
    "repository_document",
    metadata,
    Column("unique_id", String(256), primary_key=True),
    Column("mime_type", String(256), nullable=False),
    Column("sha1", String(40), nullable=False),
    Column("size", Integer, nullable=False),
    Column("blob_key", String(128), nullable=False),
    Column("state", String(16), nullable=False),
    # The submission that wrote the pending row: only that submission may promote or drop it.
    Column("submission", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class StoredDocument:
    unique_id: str
    mime_type: str
    sha1: str
    size: int
    blob_key: str
    state: str


def blob_key_for(unique_id: str) -> str:
    """Blob key of a document: uniqueIds may hold any character, so the key is their hash."""
    return "doc/" + hashlib.sha256(unique_id.encode("utf-8")).hexdigest()


class RepositoryStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def get(self, unique_id: str) -> StoredDocument | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(repository_document).where(repository_document.c.unique_id == unique_id)
            ).first()
        return None if row is None else _document(row)

    def reserve(self, unique_id: str, mime_type: str, sha1: str, size: int, submission: str) -> StoredDocument | None:
        """Insert a pending row. Returns None when reserved, or the row that already holds
        ``unique_id`` (written by another submission, possibly at this very moment)."""
        row = {
            "unique_id": unique_id,
            "mime_type": mime_type,
            "sha1": sha1,
            "size": size,
            "blob_key": blob_key_for(unique_id),
            "state": PENDING,
            "submission": submission,
            "created_at": datetime.now(timezone.utc),
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(repository_document.insert().values(**row))
        except IntegrityError:
            existing = self.get(unique_id)
            if existing is None:  # deleted between our insert and our read: try once more
                return self.reserve(unique_id, mime_type, sha1, size, submission)
            return existing
        return None

    def make_available(self, submission: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(repository_document)
                .where(repository_document.c.submission == submission)
                .where(repository_document.c.state == PENDING)
                .values(state=AVAILABLE)
            )

    def drop_pending(self, submission: str) -> list[str]:
        """Delete the pending rows of a failed submission; returns their blob keys."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(repository_document.c.blob_key)
                .where(repository_document.c.submission == submission)
                .where(repository_document.c.state == PENDING)
            ).all()
            conn.execute(
                delete(repository_document)
                .where(repository_document.c.submission == submission)
                .where(repository_document.c.state == PENDING)
            )
        return [row.blob_key for row in rows]

    def stale_pending(self, older_than: timedelta) -> list[str]:
        """Submissions left pending by a process that died mid-way (for clean-up at start)."""
        cutoff = datetime.now(timezone.utc) - older_than
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(repository_document.c.submission)
                .where(repository_document.c.state == PENDING)
                .where(repository_document.c.created_at < cutoff)
                .distinct()
            ).all()
        return [row.submission for row in rows]


def _document(row) -> StoredDocument:
    return StoredDocument(row.unique_id, row.mime_type, row.sha1, row.size, row.blob_key, row.state)
