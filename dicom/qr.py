"""Query/Retrieve SCP (DICOM PS3.4 Annex C): C-FIND, C-MOVE and C-GET over the archive index.

Every KOS manifest names our AE title as the Retrieve AE Title of each series, so a consumer may
C-MOVE or C-GET what it references. This module gives the pynetdicom handlers and presentation
contexts; ``dicom.scp.DicomServer`` binds them.

- C-FIND: Patient Root and Study Root models, levels PATIENT, STUDY, SERIES and IMAGE; universal,
  single value, UID list, wildcard (``*`` ``?``) and range (DA, TM, DT) matching, answered from
  the index tables with SQL (never by reading instances).
- C-MOVE: only to AE titles configured in ``move_destinations`` (others: 0xA801).
- C-GET: C-STORE sub-operations on the requestor's own association.

Retrieves read one instance at a time from the blob store, so memory stays at one instance.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import (
    ALL_TRANSFER_SYNTAXES,
    StoragePresentationContexts,
    build_context,
    evt,
)
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicom import index

log = logging.getLogger(__name__)

QR_CONTEXTS = (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
)
STUDY_ROOT = {
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
}

# Status codes (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4).
PENDING = 0xFF00
PENDING_WARNING = 0xFF01  # some optional keys are not supported
CANCEL = 0xFE00
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900

# A C-MOVE association proposes at most 128 presentation contexts (PS3.8 9.3.2.2).
MAX_CONTEXTS = 128

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

# As acceptor, pynetdicom takes the first of its own syntaxes that the requestor proposes:
# Explicit VR Little Endian first, so that what we mostly store goes out as stored.
STORAGE_SYNTAXES = list(dict.fromkeys([ExplicitVRLittleEndian, *ALL_TRANSFER_SYNTAXES]))

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")

# The unique key of each level (PS3.4 C.3).
UNIQUE_KEY = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}

# Keys answered by count or aggregate queries rather than a column.
COMPUTED_KEYS = {
    "ModalitiesInStudy",
    "SOPClassesInStudy",
    "NumberOfPatientRelatedStudies",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "NumberOfSeriesRelatedInstances",
}

# Keys that never become a match condition: they describe the query, not the objects.
NOT_MATCHED = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle",
               "InstanceAvailability", "TimezoneOffsetFromUTC"}


class QueryError(Exception):
    """The identifier cannot be answered; ``status`` is the DIMSE failure status."""

    def __init__(self, message: str, status: int = IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS):
        super().__init__(message)
        self.status = status


# -- The index, seen as a hierarchy ----------------------------------------------------------


def _snake(keyword: str) -> str:
    """``StudyInstanceUID`` -> ``study_instance_uid``: the index's column naming."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", keyword)
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", spaced)
    return spaced.lower()


@dataclass(frozen=True)
class Hierarchy:
    """The four index tables and how each level joins to its parent."""

    tables: dict[str, sa.Table]

    @classmethod
    def from_index(cls) -> Hierarchy:
        return cls({"PATIENT": index.patient, "STUDY": index.study, "SERIES": index.series,
                    "IMAGE": index.instance})

    def levels_up_to(self, level: str) -> list[str]:
        """The level and its ancestors, the most specific first."""
        return list(reversed(LEVELS[: LEVELS.index(level) + 1]))

    def join_condition(self, child: str, parent: str) -> sa.ColumnElement[bool]:
        """The child-to-parent join: its foreign key, or else the shared unique key column."""
        child_table, parent_table = self.tables[child], self.tables[parent]
        for fk in child_table.foreign_keys:
            if fk.column.table is parent_table:
                return fk.parent == fk.column
        name = _snake(UNIQUE_KEY[parent])
        return child_table.c[name] == parent_table.c[name]

    def from_clause(self, level: str) -> sa.FromClause:
        levels = self.levels_up_to(level)
        clause: sa.FromClause = self.tables[levels[0]]
        for child, parent in itertools.pairwise(levels):
            clause = clause.join(self.tables[parent], self.join_condition(child, parent))
        return clause

    def column(self, keyword: str, level: str) -> sa.Column | None:
        """The column holding ``keyword`` at ``level`` or above, owner level first."""
        name = _snake(keyword)
        owner = _owner_level(keyword)
        levels = self.levels_up_to(level)
        if owner in levels:
            levels.remove(owner)
            levels.insert(0, owner)
        for candidate in levels:
            table = self.tables[candidate]
            if name in table.c:
                return table.c[name]
        return None


def _owner_level(keyword: str) -> str | None:
    if keyword.startswith("Patient") or keyword in ("OtherPatientIDs", "IssuerOfPatientID"):
        return "PATIENT"
    if keyword in ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
                   "SeriesDate", "SeriesTime", "BodyPartExamined"):
        return "SERIES"
    if keyword.startswith("SOP") or keyword in ("InstanceNumber",):
        return "IMAGE"
    if keyword.startswith("Study") or keyword in ("AccessionNumber", "ReferringPhysicianName"):
        return "STUDY"
    return None


# -- Matching (PS3.4 C.2.2.2) ----------------------------------------------------------------


def _wildcard_to_like(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def match_condition(column: sa.Column, vr: str, value: Any) -> sa.ColumnElement[bool] | None:
    """The SQL condition for one matching key, or None for universal matching."""
    if value is None or value == "" or (isinstance(value, (list, tuple)) and not value):
        return None

    # UID list matching: a multi-valued UI key matches any of its values.
    if vr == "UI":
        values = [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
        values = [v for v in values if v]
        return column.in_(values) if values else None

    text = str(value).strip()
    if vr in ("DA", "TM", "DT") and "-" in text:
        return _range_condition(column, vr, text)

    if vr in ("DA", "TM"):
        return _as_text(column, vr) == text

    if "*" in text or "?" in text:
        if text.strip("*") == "":
            return None  # "*" alone is universal matching
        return column.like(_wildcard_to_like(text), escape="\\")
    return column == text


def _range_condition(column: sa.Column, vr: str, text: str) -> sa.ColumnElement[bool]:
    """``A-B``, ``A-`` or ``-B`` (PS3.4 C.2.2.2.5), compared as DICOM strings."""
    lower, _, upper = text.partition("-")
    target = _as_text(column, vr)
    conditions = []
    if lower:
        conditions.append(target >= lower)
    if upper:
        # An upper TM/DT bound like 1200 includes 120059: pad with the highest digits.
        bound = upper if vr == "DA" else upper + "\uffff"
        conditions.append(target <= bound)
    conditions.append(column.is_not(None))
    return sa.and_(*conditions)


def _as_text(column: sa.Column, vr: str):
    """Dates stored as SQL DATE compare as YYYYMMDD text, like the DICOM value."""
    if vr == "DA" and isinstance(column.type, sa.Date):
        return sa.func.replace(sa.cast(column, sa.String), "-", "")
    return column


# -- Query building ----------------------------------------------------------------------------


@dataclass
class Query:
    level: str
    statement: sa.Select
    # (keyword, column or None) for every return key, in the identifier's order.
    return_keys: list[tuple[str, sa.Column | None]]
    unsupported: list[str]


def check_level(identifier: Dataset, model: str) -> str:
    level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    if level not in LEVELS:
        raise QueryError(f"Query/Retrieve Level {level!r} is not one of {', '.join(LEVELS)}")
    if level == "PATIENT" and model in STUDY_ROOT:
        raise QueryError("the Study Root model has no PATIENT level")
    return level


def build_query(hierarchy: Hierarchy, identifier: Dataset, level: str) -> Query:
    """SELECT rows of ``level`` matching the identifier's keys (PS3.4 C.2.2)."""
    own = hierarchy.tables[level]
    conditions = []
    return_keys: list[tuple[str, sa.Column | None]] = []
    unsupported = []

    for element in identifier:
        keyword = element.keyword
        if not keyword or keyword in NOT_MATCHED:
            continue
        if element.VR == "SQ":
            # Sequence matching is optional; the key is returned empty.
            return_keys.append((keyword, None))
            continue

        if keyword in COMPUTED_KEYS:
            return_keys.append((keyword, None))
            if keyword == "ModalitiesInStudy" and level == "STUDY":
                condition = _modalities_condition(hierarchy, element.value)
                if condition is not None:
                    conditions.append(condition)
            continue

        column = hierarchy.column(keyword, level)
        return_keys.append((keyword, column))
        if column is None:
            unsupported.append(keyword)
            continue
        condition = match_condition(column, element.VR, element.value)
        if condition is not None:
            conditions.append(condition)

    columns = [column for _, column in return_keys if column is not None]
    key_column = own.c[_snake(UNIQUE_KEY[level])]
    statement = (sa.select(key_column, *columns).select_from(hierarchy.from_clause(level))
                 .where(*conditions).order_by(key_column))
    if level == "PATIENT":
        statement = statement.distinct()
    return Query(level, statement, return_keys, unsupported)


def _modalities_condition(hierarchy: Hierarchy, value: Any):
    values = [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value or "")]
    values = [v for v in values if v and v != "*"]
    if not values:
        return None
    series, study = hierarchy.tables["SERIES"], hierarchy.tables["STUDY"]
    return sa.exists().where(hierarchy.join_condition("SERIES", "STUDY"),
                             series.c.modality.in_(values)).correlate(study)


# -- Answers -----------------------------------------------------------------------------------


def _dicom_value(value: Any, vr: str) -> Any:
    """An index value as pydicom wants it for ``vr`` (dates as YYYYMMDD text)."""
    if value is None:
        return None
    if vr == "DA" and hasattr(value, "strftime"):
        return value.strftime("%Y%m%d")
    if vr == "TM" and hasattr(value, "strftime"):
        return value.strftime("%H%M%S")
    return value


class Responder:
    """Runs a Query and turns each row into a C-FIND response identifier."""

    def __init__(self, engine: sa.Engine, hierarchy: Hierarchy, ae_title: str):
        self.engine = engine
        self.hierarchy = hierarchy
        self.ae_title = ae_title

    def answers(self, query: Query, identifier: Dataset) -> Iterator[Dataset]:
        columns = [column for _, column in query.return_keys if column is not None]
        with self.engine.connect() as connection:
            result = connection.execution_options(yield_per=200).execute(query.statement)
            for row in result:
                yield self._answer(connection, query, identifier, row[0], row[1:], columns)

    def _answer(self, connection, query: Query, identifier: Dataset, key: str, values,
                columns) -> Dataset:
        by_column = dict(zip([id(c) for c in columns], values))
        answer = Dataset()
        answer.SpecificCharacterSet = "ISO_IR 192"  # the index holds Unicode text
        answer.QueryRetrieveLevel = query.level
        for keyword, column in query.return_keys:
            vr = identifier[keyword].VR
            if vr == "SQ":
                setattr(answer, keyword, [])
            elif column is not None:
                setattr(answer, keyword, _dicom_value(by_column[id(column)], vr))
            else:
                setattr(answer, keyword, self._computed(connection, query.level, keyword, key))
        if "RetrieveAETitle" in identifier:
            answer.RetrieveAETitle = self.ae_title
        return answer

    def _computed(self, connection, level: str, keyword: str, key: str) -> Any:
        """Counts and aggregates over the levels below ``level`` (None if not defined here)."""
        targets = {
            "ModalitiesInStudy": ("STUDY", "SERIES", "modality"),
            "SOPClassesInStudy": ("STUDY", "IMAGE", "sop_class_uid"),
            "NumberOfPatientRelatedStudies": ("PATIENT", "STUDY", None),
            "NumberOfStudyRelatedSeries": ("STUDY", "SERIES", None),
            "NumberOfStudyRelatedInstances": ("STUDY", "IMAGE", None),
            "NumberOfSeriesRelatedInstances": ("SERIES", "IMAGE", None),
        }
        at, below, column_name = targets[keyword]
        if at != level:
            return None

        key_column = self.hierarchy.tables[at].c[_snake(UNIQUE_KEY[at])]
        from_clause = self.hierarchy.from_clause(below)
        if column_name is None:
            statement = sa.select(sa.func.count()).select_from(from_clause).where(key_column == key)
            return connection.execute(statement).scalar_one()
        column = self.hierarchy.tables[below].c[column_name]
        statement = (sa.select(column).distinct().select_from(from_clause)
                     .where(key_column == key, column.is_not(None)).order_by(column))
        return [value for value in connection.execute(statement).scalars() if value] or None

    def instances(self, identifier: Dataset, level: str) -> list:
        """(sop_instance_uid, sop_class_uid, transfer_syntax_uid) of every instance below the
        entities the retrieve identifier names (PS3.4 C.4.2.1.4: unique keys only)."""
        image = self.hierarchy.tables["IMAGE"]
        conditions = []
        for keyword in [UNIQUE_KEY[name] for name in LEVELS[: LEVELS.index(level) + 1]]:
            if keyword in identifier and identifier[keyword].value not in (None, ""):
                column = self.hierarchy.column(keyword, "IMAGE")
                element = identifier[keyword]
                conditions.append(match_condition(column, element.VR, element.value))
        if UNIQUE_KEY[level] not in identifier or not identifier[UNIQUE_KEY[level]].value:
            raise QueryError(f"a {level} retrieve needs {UNIQUE_KEY[level]}")

        statement = (sa.select(image.c.sop_instance_uid, image.c.sop_class_uid,
                               image.c.transfer_syntax_uid)
                     .select_from(self.hierarchy.from_clause("IMAGE"))
                     .where(*[c for c in conditions if c is not None])
                     .order_by(image.c.sop_instance_uid))
        with self.engine.connect() as connection:
            return list(connection.execute(statement))


# -- pynetdicom handlers -------------------------------------------------------------------------


def _read_instance(archive, sop_instance_uid: str) -> Dataset:
    """One stored instance, whole: what a C-STORE sub-operation sends."""
    with archive.open_instance(sop_instance_uid) as f:
        return dcmread(f)


def _storage_contexts(instances: list) -> list:
    """Contexts to propose to a C-MOVE destination, at most 128: per (SOP class, stored transfer
    syntax) one context with exactly that syntax, so the instance goes out as stored; for an
    uncompressed one also a context with the other uncompressed syntaxes as a fallback that
    pynetdicom can convert to."""
    contexts, seen = [], set()
    for _, sop_class, syntax in instances:
        if (sop_class, syntax) in seen:
            continue
        seen.add((sop_class, syntax))
        contexts.append(build_context(sop_class, [syntax]))
        if UID(syntax) in UNCOMPRESSED:
            contexts.append(build_context(sop_class, [ts for ts in UNCOMPRESSED if ts != syntax]))
    return contexts[:MAX_CONTEXTS]


def _send_each(archive, event, instances: list) -> Iterator[tuple[int, Dataset | None]]:
    for sop_instance_uid, _, _ in instances:
        if event.is_cancelled:
            yield CANCEL, None
            return
        yield PENDING, _read_instance(archive, sop_instance_uid)


def query_retrieve_handlers(archive, move_destinations: dict[str, tuple[str, int]]) -> list[tuple]:
    """(event, handler) pairs for ``AE.start_server(evt_handlers=...)``: C-FIND, C-MOVE, C-GET.

    ``move_destinations`` maps an AE title to its (host, port); it is the only place a C-MOVE
    may send to."""
    hierarchy = Hierarchy.from_index()

    def responder(event) -> Responder:
        return Responder(archive.engine, hierarchy, event.assoc.ae.ae_title)

    def handle_find(event):
        identifier = event.identifier
        try:
            level = check_level(identifier, event.request.AffectedSOPClassUID)
            query = build_query(hierarchy, identifier, level)
        except QueryError as exc:
            log.warning("C-FIND from %s refused: %s", event.assoc.requestor.ae_title, exc)
            yield exc.status, None
            return

        status = PENDING_WARNING if query.unsupported else PENDING
        count = 0
        for answer in responder(event).answers(query, identifier):
            if event.is_cancelled:
                yield CANCEL, None
                return
            count += 1
            yield status, answer
        log.info("C-FIND %s level from %s: %d match(es)", level,
                 event.assoc.requestor.ae_title, count)

    def handle_move(event):
        destination = move_destinations.get((event.move_destination or "").strip())
        if destination is None:
            log.warning("C-MOVE from %s to unknown destination %r", event.assoc.requestor.ae_title,
                        event.move_destination)
            yield None, None
            return

        identifier = event.identifier
        level = check_level(identifier, event.request.AffectedSOPClassUID)  # raises: 0xC5xx
        instances = responder(event).instances(identifier, level)
        log.info("C-MOVE %s level from %s to %s: %d instance(s)", level,
                 event.assoc.requestor.ae_title, event.move_destination, len(instances))

        yield destination[0], destination[1], {"contexts": _storage_contexts(instances)}
        yield len(instances)
        yield from _send_each(archive, event, instances)

    def handle_get(event):
        identifier = event.identifier
        level = check_level(identifier, event.request.AffectedSOPClassUID)  # raises: 0xC4xx
        instances = responder(event).instances(identifier, level)
        log.info("C-GET %s level from %s: %d instance(s)", level, event.assoc.requestor.ae_title,
                 len(instances))

        yield len(instances)
        yield from _send_each(archive, event, instances)

    return [(evt.EVT_C_FIND, handle_find), (evt.EVT_C_MOVE, handle_move),
            (evt.EVT_C_GET, handle_get)]


def add_query_retrieve_contexts(ae) -> None:
    """Support the Q/R FIND, MOVE and GET models, and the storage contexts in both roles.

    For C-GET the requestor proposes each storage SOP class with an SCP/SCU Role Selection item
    asking to be the SCP (PS3.7 D.3.3.4); accepting both roles lets us send C-STORE back on that
    association while ordinary C-STORE requestors (no role item) keep the default roles."""
    for abstract_syntax in QR_CONTEXTS:
        ae.add_supported_context(abstract_syntax)
    for context in StoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, STORAGE_SYNTAXES,
                                 scu_role=True, scp_role=True)
