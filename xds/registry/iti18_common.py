"""What the ITI-18 stored queries share: parameter syntax and checks, conditions, look-ups.

Parameter values use the stored-query syntax: a quoted string ``'x'`` (a doubled quote
``''`` inside it is a quote), a number ``20240105``, or a list ``('a','b')``. Several
``rim:Value`` elements of one slot add to the list; for the code parameters that allow
AND (eventCodeList, confidentialityCode) each ``rim:Value`` is one OR-group and the groups
are ANDed (ITI TF-2 3.18.4.1.2.3.5).

A parameter the query does not know (``$homeCommunityId`` included: this registry is its own
community) is ignored. Errors raise ``XdsError`` with the code ITI TF-2 3.18.4.1.3 gives:
a missing required parameter is XDSStoredQueryMissingParam, a wrong number of values (or
both or neither of an "exactly one of" pair) XDSStoredQueryParamNumber, a malformed value
XDSRegistryError. The codeContext names the parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml.etree import _Element
from sqlalchemy import and_, exists, or_, select
from sqlalchemy.engine import Connection, Row
from sqlalchemy.sql.elements import ColumnElement

from xds.errors import ErrorCode, XdsError
from xds.metadata import RIM_SLOT, RIM_VALUE
from xds.registry.store import (
    KIND_ASSOCIATION,
    KIND_DOCUMENT_ENTRY,
    registry_codes,
    registry_objects,
)
from xds.validation import is_dtm, is_uuid

# -- value syntax ---------------------------------------------------------------------------------


def parse_value(text: str) -> list[str]:
    """Parse one stored-query value: ``'x'``, ``12``, or ``('a', 'b', 3)`` into strings.

    Raises
    ------
    ValueError
        Unbalanced quotes or parentheses.
    """
    text = text.strip()
    if text.startswith("("):
        if not text.endswith(")"):
            raise ValueError(f"list value without closing parenthesis: {text}")
        text = text[1:-1]
    items: list[str] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char in " \t\r\n,":
            position += 1
        elif char == "'":
            item, position = _quoted(text, position)
            items.append(item)
        else:
            end = position
            while end < len(text) and text[end] not in ",":
                end += 1
            items.append(text[position:end].strip())
            position = end
    return items


def _quoted(text: str, start: int) -> tuple[str, int]:
    """The quoted string starting at ``start`` and the position after its closing quote."""
    chars = []
    position = start + 1
    while position < len(text):
        if text[position] == "'":
            if text[position + 1 : position + 2] == "'":
                chars.append("'")
                position += 2
                continue
            return "".join(chars), position + 1
        chars.append(text[position])
        position += 1
    raise ValueError(f"unterminated quoted string in {text}")


# -- the parameters of one request --------------------------------------------------------------


def _malformed(name: str, message: str) -> XdsError:
    return XdsError(ErrorCode.XDSRegistryError, f"parameter {name}: {message}", name)


@dataclass
class Parameters:
    """The slots of an AdhocQuery: name -> list of value groups (one per rim:Value)."""

    groups: dict[str, list[list[str]]]

    @classmethod
    def parse(cls, adhoc_query: _Element) -> Parameters:
        groups: dict[str, list[list[str]]] = {}
        for slot in adhoc_query.iterchildren(RIM_SLOT):
            name = slot.get("name", "")
            try:
                values = [parse_value(value.text or "") for value in slot.iter(RIM_VALUE)]
            except ValueError as exc:
                raise _malformed(name, str(exc)) from exc
            groups.setdefault(name, []).extend(values)
        return cls(groups)

    def values(self, name: str) -> list[str]:
        return [value for group in self.groups.get(name, []) for value in group]

    def required(self, name: str) -> list[str]:
        values = self.values(name)
        if not values:
            raise XdsError(
                ErrorCode.XDSStoredQueryMissingParam, f"required parameter {name} is missing", name
            )
        return values

    def single(self, name: str, required: bool = False) -> str | None:
        values = self.required(name) if required else self.values(name)
        if len(values) > 1:
            raise XdsError(
                ErrorCode.XDSStoredQueryParamNumber,
                f"parameter {name} takes one value; {len(values)} were given",
                name,
            )
        return values[0] if values else None

    def time(self, name: str) -> str | None:
        """A time bound (one DTM value, YYYY[MM[DD[hh[mm[ss]]]]]), or None when absent."""
        bound = self.single(name)
        if bound is not None and not is_dtm(bound):
            raise _malformed(name, f"{bound!r} is not a time YYYY[MM[DD[hh[mm[ss]]]]]")
        return bound

    def entry_uuids(self, name: str, required: bool = False) -> list[str]:
        """The values of ``name``, each of which must be an ``urn:uuid:`` entryUUID."""
        values = self.required(name) if required else self.values(name)
        for value in values:
            if not is_uuid(value):
                raise _malformed(name, f"{value!r} is not an entryUUID (urn:uuid:...)")
        return values

    def one_of(
        self, query_name: str, uuid_name: str, unique_id_name: str, single: bool = False
    ) -> tuple[bool, list[str]]:
        """Exactly one of an entryUUID parameter and a uniqueId parameter.

        Returns ``(by_uuid, values)``: whether the entryUUID parameter was the one given, and
        its values (exactly one value when ``single``).
        """
        uuids = self.entry_uuids(uuid_name)
        unique_ids = self.values(unique_id_name)
        if bool(uuids) == bool(unique_ids):
            raise XdsError(
                ErrorCode.XDSStoredQueryParamNumber,
                f"{query_name} takes exactly one of {uuid_name} and {unique_id_name}",
                query_name,
            )
        if single:
            self.single(uuid_name if uuids else unique_id_name)
        return (True, uuids) if uuids else (False, unique_ids)


# -- conditions several queries share -----------------------------------------------------------


def code_condition(scheme: str, coded: list[str]) -> ColumnElement[bool]:
    """EXISTS a code row of ``scheme`` matching one of ``coded`` (``code^^codingScheme``)."""
    alternatives = []
    for value in coded:
        code, _, coding_scheme = value.partition("^^")
        condition = registry_codes.c.code == code
        if coding_scheme:
            condition = and_(condition, registry_codes.c.coding_scheme == coding_scheme)
        alternatives.append(condition)
    return exists().where(
        registry_codes.c.entry_uuid == registry_objects.c.entry_uuid,
        registry_codes.c.scheme == scheme,
        or_(*alternatives),
    )


def code_conditions(
    parameters: Parameters, name: str, scheme: str, and_or: bool = False
) -> list[ColumnElement[bool]]:
    """The conditions of code parameter ``name``: none when absent, one per AND-group."""
    groups = parameters.groups.get(name, [])
    if not any(groups):
        return []
    if and_or:
        return [code_condition(scheme, group) for group in groups if group]
    return [code_condition(scheme, parameters.values(name))]


def patient_conditions(parameters: Parameters, prefix: str, kind: str) -> list[ColumnElement[bool]]:
    """What every Find query starts from: objects of ``kind`` for the required
    ``<prefix>PatientId``, in one of the required ``<prefix>Status`` values."""
    return [
        registry_objects.c.kind == kind,
        registry_objects.c.patient_id == parameters.single(f"{prefix}PatientId", required=True),
        registry_objects.c.status.in_(parameters.required(f"{prefix}Status")),
    ]


def time_conditions(
    parameters: Parameters, bounds: dict[str, tuple[str, str]]
) -> list[ColumnElement[bool]]:
    """Conditions for time parameters: name -> (column, ``>=`` for From or ``<`` for To).

    Times are stored as DTM strings, so a shorter bound compares as its own prefix would:
    ``From 2005`` keeps everything from 2005 on, ``To 2006`` everything before 2006.
    """
    conditions = []
    for name, (column_name, operator) in bounds.items():
        bound = parameters.time(name)
        if bound is None:
            continue
        column = registry_objects.c[column_name]
        conditions.append(column >= bound if operator == ">=" else column < bound)
    return conditions


# -- look-ups -----------------------------------------------------------------------------------


def select_objects(connection: Connection, *conditions: ColumnElement[bool]) -> list[Row]:
    """The registry objects meeting every condition, in entryUUID order (a stable answer)."""
    query = select(registry_objects).where(*conditions).order_by(registry_objects.c.entry_uuid)
    return list(connection.execute(query))


def select_documents(connection: Connection, by_uuid: bool, values: list[str]) -> list[Row]:
    """The DocumentEntries with one of ``values`` as entryUUID (``by_uuid``) or uniqueId."""
    column = registry_objects.c.entry_uuid if by_uuid else registry_objects.c.unique_id
    return select_objects(
        connection, registry_objects.c.kind == KIND_DOCUMENT_ENTRY, column.in_(values)
    )


def associations_touching(
    connection: Connection, uuids: list[str], types: list[str] | None = None
) -> list[Row]:
    """The Associations with one of ``uuids`` as source or target (of ``types`` if given)."""
    if not uuids:
        return []
    conditions = [
        registry_objects.c.kind == KIND_ASSOCIATION,
        or_(
            registry_objects.c.source_object.in_(uuids),
            registry_objects.c.target_object.in_(uuids),
        ),
    ]
    if types is not None:
        conditions.append(registry_objects.c.association_type.in_(types))
    return select_objects(connection, *conditions)
