"""Read-only views of the index rows that the archive hands out."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from dicom import index


def _aware(value: datetime | None) -> datetime | None:
    """SQLite gives back naive datetimes; the index always stores UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _split(value: str | None) -> list[str]:
    return [v for v in (value or "").split("\\") if v]


@dataclass(frozen=True)
class StudyRecord:
    study_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str | None
    patient_name: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    specific_character_set: str | None
    accession_number: str | None
    accession_issuer_local_id: str | None
    accession_issuer_universal_id: str | None
    accession_issuer_universal_id_type: str | None
    study_date: str | None
    study_time: str | None
    study_id: str | None
    study_description: str | None
    referring_physician_name: str | None
    procedure_codes: list[tuple[str, str, str]]
    modalities: list[str]
    body_parts: list[str]
    created_at: datetime
    updated_at: datetime
    instance_count: int

    @property
    def accession_issuer_oid(self) -> str | None:
        """The accession issuer's universal id when it is an ISO OID."""
        if (self.accession_issuer_universal_id_type or "").upper() == "ISO":
            return self.accession_issuer_universal_id
        return None

    @property
    def birth_date(self) -> str | None:
        return self.patient_birth_date

    @property
    def sex(self) -> str | None:
        return self.patient_sex

    @classmethod
    def from_row(cls, row) -> StudyRecord:
        return cls(
            study_instance_uid=row["study_instance_uid"],
            patient_id=row["patient_id"],
            issuer_of_patient_id=row["issuer_of_patient_id"] or None,
            patient_name=row["patient_name"],
            patient_birth_date=row["patient_birth_date"],
            patient_sex=row["patient_sex"],
            specific_character_set=row["specific_character_set"],
            accession_number=row["accession_number"],
            accession_issuer_local_id=row["accession_issuer_local_id"],
            accession_issuer_universal_id=row["accession_issuer_universal_id"],
            accession_issuer_universal_id_type=row["accession_issuer_universal_id_type"],
            study_date=row["study_date"],
            study_time=row["study_time"],
            study_id=row["study_id"],
            study_description=row["study_description"],
            referring_physician_name=row["referring_physician_name"],
            procedure_codes=[tuple(c) for c in json.loads(row["procedure_codes"] or "[]")],
            modalities=_split(row["modalities"]),
            body_parts=_split(row["body_parts"]),
            created_at=_aware(row["created_at"]),
            updated_at=_aware(row["updated_at"]),
            instance_count=row["instance_count"],
        )


def study_query() -> sa.Select:
    st, p = index.study, index.patient
    return sa.select(
        st, p.c.patient_id, p.c.issuer_of_patient_id, p.c.patient_name, p.c.patient_birth_date,
        p.c.patient_sex,
    ).join(p, st.c.patient_fk == p.c.id)


@dataclass(frozen=True)
class SeriesRecord:
    series_instance_uid: str
    study_instance_uid: str
    modality: str | None
    series_number: int | None
    body_part_examined: str | None
    series_description: str | None
    series_date: str | None
    series_time: str | None
    instance_count: int

    @classmethod
    def from_row(cls, row) -> SeriesRecord:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class InstanceRecord:
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    instance_number: int | None
    transfer_syntax_uid: str
    blob_key: str
    sha1: str
    size: int
    number_of_frames: int | None
    received_at: datetime

    @classmethod
    def from_row(cls, row) -> InstanceRecord:
        values = {name: row[name] for name in cls.__dataclass_fields__}
        values["received_at"] = _aware(values["received_at"])
        return cls(**values)


def instance_query() -> sa.Select:
    i, s, st = index.instance, index.series, index.study
    return (sa.select(i, s.c.series_instance_uid, st.c.study_instance_uid)
            .join(s, i.c.series_fk == s.c.id)
            .join(st, s.c.study_fk == st.c.id))
