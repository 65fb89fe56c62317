"""Tables of the embedded Document Registry (SQLAlchemy Core on ``xds.db.metadata``).

One row per registry object (DocumentEntry, SubmissionSet, Folder, Association) with the
columns the stored queries filter on, plus the object's XML as registered (ids resolved to
UUIDs). Uniqueness lives in the database so that several service processes can share it:

* ``registry_unique_ids`` has ``unique_id`` as primary key: a SubmissionSet or Folder
  uniqueId can be registered once, and a DocumentEntry uniqueId once *per content*; an
  identical resubmission adds a new DocumentEntry row but no second uniqueId row
  (ITI-42 3.42.4.1.3.3.1, ITI TF-3 Table 4.2.4.1-2).
* ``registry_objects`` additionally has a partial unique index on (kind, unique_id) for
  SubmissionSets and Folders.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    String,
    Table,
    Text,
    text,
)

from xds.db import metadata

KIND_DOCUMENT_ENTRY = "DocumentEntry"
KIND_SUBMISSION_SET = "SubmissionSet"
KIND_FOLDER = "Folder"
KIND_ASSOCIATION = "Association"

_UNIQUE_KINDS = text("kind IN ('SubmissionSet', 'Folder')")

registry_objects = Table(
    "registry_objects",
    metadata,
    Column("entry_uuid", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("unique_id", String(128)),
    Column("patient_id", String(256)),
    Column("status", String(64), nullable=False),
    # DocumentEntry
    Column("object_type", String(64)),
    Column("mime_type", String(128)),
    Column("hash", String(40)),
    Column("size", BigInteger),
    Column("repository_unique_id", String(64)),
    Column("creation_time", String(14)),
    Column("service_start_time", String(14)),
    Column("service_stop_time", String(14)),
    # SubmissionSet
    Column("submission_time", String(14)),
    Column("source_id", String(64)),
    # Association
    Column("association_type", String(128)),
    Column("source_object", String(64)),
    Column("target_object", String(64)),
    # The object as registered (rim:ExtrinsicObject, rim:RegistryPackage or rim:Association).
    Column("xml", Text, nullable=False),
    Index("ix_registry_objects_patient", "patient_id", "kind", "status"),
    Index("ix_registry_objects_unique_id", "unique_id"),
    Index("ix_registry_objects_source", "source_object"),
    Index("ix_registry_objects_target", "target_object"),
    Index(
        "ux_registry_objects_package_unique_id",
        "kind",
        "unique_id",
        unique=True,
        sqlite_where=_UNIQUE_KINDS,
        postgresql_where=_UNIQUE_KINDS,
    ),
)

# Coded values of an object (classCode, typeCode, eventCodeList ...), one row per code.
registry_codes = Table(
    "registry_codes",
    metadata,
    Column(
        "entry_uuid",
        String(64),
        ForeignKey("registry_objects.entry_uuid", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("scheme", String(64), nullable=False),  # classificationScheme UUID
    Column("code", String(256), nullable=False),
    Column("coding_scheme", String(256), nullable=False),
    Index("ix_registry_codes_lookup", "scheme", "code", "coding_scheme"),
    Index("ix_registry_codes_entry", "entry_uuid"),
)

# Every uniqueId ever registered: the database-enforced uniqueness rule.
registry_unique_ids = Table(
    "registry_unique_ids",
    metadata,
    Column("unique_id", String(128), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("entry_uuid", String(64), nullable=False),
    Column("hash", String(40)),
    Column("size", BigInteger),
)

REGISTRY_TABLES = (registry_objects, registry_codes, registry_unique_ids)


def create_tables(engine) -> None:  # type: ignore[no-untyped-def]
    """Create the registry tables only (``xds.db.create_all`` creates every XDS table)."""
    metadata.create_all(engine, tables=list(REGISTRY_TABLES))
