"""The archive index: patient, study, series and instance tables (SQLAlchemy Core).

The tables live on their own ``index_metadata`` so that the DICOM side knows nothing of the XDS
tables. Column names are the DICOM keywords in snake case (``PatientBirthDate`` ->
``patient_birth_date``), which lets the query/retrieve SCP map C-FIND keys onto columns.

Text values are stored decoded (Python ``str``, using the instance's Specific Character Set);
dates and times are stored as their DICOM text (``YYYYMMDD``, ``HHMMSS.FFFFFF``) so that range
matching compares them as DICOM does. Uniqueness of the UIDs is a database constraint, so several
processes may share one index.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

index_metadata = sa.MetaData()

UID = sa.String(64)

patient = sa.Table(
    "patient",
    index_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    # Empty string, not NULL, when absent: NULLs never collide in a unique constraint.
    sa.Column("patient_id", sa.String(64), nullable=False, default=""),
    sa.Column("issuer_of_patient_id", sa.String(64), nullable=False, default=""),
    sa.Column("patient_name", sa.Text),
    sa.Column("patient_birth_date", sa.String(8)),
    sa.Column("patient_sex", sa.String(16)),
    sa.Column("specific_character_set", sa.String(200)),
    sa.UniqueConstraint("patient_id", "issuer_of_patient_id", name="uq_patient_id_issuer"),
)

study = sa.Table(
    "study",
    index_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("study_instance_uid", UID, nullable=False, unique=True),
    sa.Column("patient_fk", sa.Integer, sa.ForeignKey("patient.id"), nullable=False, index=True),
    sa.Column("accession_number", sa.String(64)),
    # Issuer of Accession Number Sequence (0008,0051): local and universal entity ids.
    sa.Column("accession_issuer_local_id", sa.String(64)),
    sa.Column("accession_issuer_universal_id", sa.String(64)),
    sa.Column("accession_issuer_universal_id_type", sa.String(16)),
    sa.Column("study_date", sa.String(8)),
    sa.Column("study_time", sa.String(16)),
    sa.Column("study_id", sa.String(16)),
    sa.Column("study_description", sa.Text),
    sa.Column("referring_physician_name", sa.Text),
    # JSON list of [code value, coding scheme designator, code meaning].
    sa.Column("procedure_codes", sa.Text),
    # Backslash-separated distinct values over the series, kept current on each new series.
    sa.Column("modalities", sa.String(200)),
    sa.Column("body_parts", sa.String(400)),
    sa.Column("specific_character_set", sa.String(200)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("instance_count", sa.Integer, nullable=False, default=0),
)

series = sa.Table(
    "series",
    index_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("series_instance_uid", UID, nullable=False, unique=True),
    sa.Column("study_fk", sa.Integer, sa.ForeignKey("study.id"), nullable=False, index=True),
    sa.Column("modality", sa.String(16)),
    sa.Column("series_number", sa.Integer),
    sa.Column("body_part_examined", sa.String(64)),
    sa.Column("series_description", sa.Text),
    sa.Column("series_date", sa.String(8)),
    sa.Column("series_time", sa.String(16)),
)

instance = sa.Table(
    "instance",
    index_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("sop_instance_uid", UID, nullable=False, unique=True),
    sa.Column("series_fk", sa.Integer, sa.ForeignKey("series.id"), nullable=False, index=True),
    sa.Column("sop_class_uid", UID, nullable=False),
    sa.Column("instance_number", sa.Integer),
    sa.Column("transfer_syntax_uid", UID, nullable=False),
    sa.Column("blob_key", sa.String(300), nullable=False),
    # SHA-1 of the data set bytes (after the File Meta Information): what "identical" means
    # for a duplicate, whatever File Meta header each sender's copy had.
    sa.Column("sha1", sa.String(40), nullable=False),
    # Size in bytes of the stored Part 10 file (what a retrieve sends).
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("number_of_frames", sa.Integer),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
)


def create_index_tables(engine: Engine) -> None:
    """Create the four index tables if they do not exist yet."""
    index_metadata.create_all(engine)
