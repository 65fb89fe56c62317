"""Durable publishing jobs, kept in the database so they survive a restart.

A job is claimed with a compare-and-set UPDATE (state and lease checked in the WHERE clause), so
several service processes can share one queue without locks in memory. A job whose worker died
is claimed again once its lease runs out. Transient failures (repository or registry
unreachable) are retried with exponential back-off; a refusal by the registry is final.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import (Column, DateTime, Integer, String, Table, Text, and_, func, or_, select,
                        update)

from xds.db import metadata

QUEUED, RUNNING, RETRYING, DONE, FAILED = "queued", "running", "retrying", "done", "failed"
LEASE = timedelta(minutes=10)
HEARTBEAT_SECONDS = 10.0  # how often a running worker says so
HEARTBEAT_FRESH = timedelta(seconds=3 * HEARTBEAT_SECONDS)
FIRST_RETRY_SECONDS = 2.0
MAX_RETRY_SECONDS = 600.0

publish_job = Table(
    "publish_job",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_uid", String(64), nullable=False, index=True),
    Column("state", String(16), nullable=False, index=True),
    Column("reason", String(64), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("lease_until", DateTime(timezone=True)),
    Column("detail", Text, nullable=False, default=""),
    Column("document_unique_id", String(64)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

published_manifest = Table(
    "published_manifest",
    metadata,
    Column("document_unique_id", String(64), primary_key=True),
    Column("entry_uuid", String(64), nullable=False),
    Column("study_uid", String(64), nullable=False, index=True),
    Column("instance_count", Integer, nullable=False),
    Column("published_at", DateTime(timezone=True), nullable=False),
    # "current", or "replaced" once a later manifest of the study took its place (RPLC).
    Column("status", String(16), nullable=False),
)

# One row per running publishing worker (an ``xdsi serve`` process), refreshed every
# HEARTBEAT_SECONDS: ``xdsi publish`` asks it whether anyone will run the job it queues.
publish_worker = Table(
    "publish_worker",
    metadata,
    Column("worker_id", String(64), primary_key=True),
    Column("seen_at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class Job:
    id: int
    study_uid: str
    state: str
    reason: str
    attempts: int
    detail: str
    document_unique_id: str | None


@dataclass(frozen=True)
class PublishedManifest:
    document_unique_id: str
    entry_uuid: str
    study_uid: str
    instance_count: int
    published_at: datetime


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _database_now(conn) -> datetime:
    """The database server's clock where it has one (PostgreSQL): services and commands on
    different hosts then compare heartbeats on one clock. A SQLite file has only this host's."""
    if conn.dialect.name == "postgresql":
        return conn.execute(select(func.now())).scalar()
    return _now()


class JobQueue:
    def __init__(self, engine):
        self.engine = engine

    def enqueue(self, study_uid: str, reason: str) -> int:
        """Queue a publication of ``study_uid``; a job already waiting for it is reused."""
        with self.engine.begin() as conn:
            waiting = conn.execute(
                select(publish_job.c.id)
                .where(publish_job.c.study_uid == study_uid)
                .where(publish_job.c.state.in_((QUEUED, RETRYING)))
            ).first()
            now = _database_now(conn)
            if waiting is not None:
                conn.execute(update(publish_job).where(publish_job.c.id == waiting.id)
                             .values(next_attempt_at=now, updated_at=now))
                return waiting.id
            result = conn.execute(publish_job.insert().values(
                study_uid=study_uid, state=QUEUED, reason=reason, attempts=0, next_attempt_at=now,
                detail="", created_at=now, updated_at=now,
            ))
            return result.inserted_primary_key[0]

    def claim(self) -> Job | None:
        """Take the oldest due job, or one whose worker's lease has run out. Due times and
        leases are read on the database's clock, like the times they were written with, so
        workers on hosts whose clocks differ agree on them."""
        with self.engine.connect() as conn:
            now = _database_now(conn)
        due = or_(
            and_(publish_job.c.state.in_((QUEUED, RETRYING)), publish_job.c.next_attempt_at <= now),
            and_(publish_job.c.state == RUNNING, publish_job.c.lease_until < now),
        )
        with self.engine.connect() as conn:
            candidates = conn.execute(select(publish_job.c.id).where(due).order_by(publish_job.c.id).limit(5)).all()
        for candidate in candidates:
            with self.engine.begin() as conn:
                claimed = conn.execute(
                    update(publish_job)
                    .where(publish_job.c.id == candidate.id)
                    .where(due)
                    .values(state=RUNNING, lease_until=now + LEASE, attempts=publish_job.c.attempts + 1,
                            updated_at=now)
                ).rowcount
            if claimed:
                return self.get(candidate.id)
        return None

    def finish(self, job_id: int, detail: str, document_unique_id: str | None = None) -> None:
        self._set(job_id, state=DONE, detail=detail, document_unique_id=document_unique_id, lease_until=None)

    def fail(self, job_id: int, detail: str) -> None:
        self._set(job_id, state=FAILED, detail=detail, lease_until=None)

    def retry_later(self, job_id: int, detail: str) -> None:
        job = self.get(job_id)
        delay = min(FIRST_RETRY_SECONDS * 2 ** max(job.attempts - 1, 0), MAX_RETRY_SECONDS)
        self._set(job_id, state=RETRYING, detail=f"{detail} (retry in {delay:.0f} s)",
                  next_attempt_at=timedelta(seconds=delay), lease_until=None)

    def get(self, job_id: int) -> Job:
        with self.engine.connect() as conn:
            row = conn.execute(select(publish_job).where(publish_job.c.id == job_id)).one()
        return _job(row)

    def list(self, limit: int = 100) -> list[Job]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(publish_job).order_by(publish_job.c.id.desc()).limit(limit)).all()
        return [_job(row) for row in rows]

    def has_waiting(self, study_uid: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(
                select(publish_job.c.id)
                .where(publish_job.c.study_uid == study_uid)
                .where(publish_job.c.state.in_((QUEUED, RETRYING, RUNNING)))
            ).first() is not None

    def heartbeat(self, worker_id: str) -> None:
        """Say that the worker ``worker_id`` runs (and forget workers silent for an hour)."""
        with self.engine.begin() as conn:
            now = _database_now(conn)
            refreshed = conn.execute(update(publish_worker)
                                     .where(publish_worker.c.worker_id == worker_id)
                                     .values(seen_at=now)).rowcount
            if not refreshed:
                conn.execute(publish_worker.insert().values(worker_id=worker_id, seen_at=now))
            conn.execute(publish_worker.delete()
                         .where(publish_worker.c.seen_at < now - timedelta(hours=1)))

    def stop_heartbeat(self, worker_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(publish_worker.delete().where(publish_worker.c.worker_id == worker_id))

    def worker_running(self) -> bool:
        """True if a worker said it runs within HEARTBEAT_FRESH."""
        with self.engine.connect() as conn:
            fresh = _database_now(conn) - HEARTBEAT_FRESH
            return conn.execute(select(publish_worker.c.worker_id)
                                .where(publish_worker.c.seen_at >= fresh)).first() is not None

    def _set(self, job_id: int, **values) -> None:
        """Update a job; a ``next_attempt_at`` given as a timedelta is that long from now, on
        the database's clock."""
        with self.engine.begin() as conn:
            now = _database_now(conn)
            if isinstance(values.get("next_attempt_at"), timedelta):
                values["next_attempt_at"] = now + values["next_attempt_at"]
            conn.execute(update(publish_job).where(publish_job.c.id == job_id).values(updated_at=now, **values))


class ManifestLedger:
    """Which manifest is the current one of each study (for replacement, RPLC)."""

    def __init__(self, engine):
        self.engine = engine

    def current(self, study_uid: str) -> PublishedManifest | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(published_manifest)
                .where(published_manifest.c.study_uid == study_uid)
                .where(published_manifest.c.status == "current")
            ).first()
        if row is None:
            return None
        return PublishedManifest(row.document_unique_id, row.entry_uuid, row.study_uid, row.instance_count,
                                 row.published_at)

    def record(self, study_uid: str, document_unique_id: str, entry_uuid: str, instance_count: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(published_manifest)
                         .where(published_manifest.c.study_uid == study_uid)
                         .where(published_manifest.c.status == "current")
                         .values(status="replaced"))
            conn.execute(published_manifest.insert().values(
                document_unique_id=document_unique_id, entry_uuid=entry_uuid, study_uid=study_uid,
                instance_count=instance_count, published_at=_now(), status="current"))


def _job(row) -> Job:
    return Job(row.id, row.study_uid, row.state, row.reason, row.attempts, row.detail, row.document_unique_id)
