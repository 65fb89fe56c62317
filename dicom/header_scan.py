"""The few top-level elements the index needs, found in a data set's first bytes.

pydicom's reader builds an element object for every element it passes on its way to those
wanted, reading each header through a file object: half a millisecond for a CT header, on the
path of every instance stored. Here the bytes are walked where they lie (Little Endian,
Explicit or Implicit VR, PS3.5 7.1), and only the wanted elements become pydicom
``RawDataElement``s, which pydicom converts as it converts its own. Sequences of undefined
length are walked item by item to their delimiter (PS3.5 7.5); a wanted one is kept as the bytes
of its items, as pydicom keeps a sequence of defined length.

Anything unusual (Big Endian, an explicit VR that is not one, an undefined length where none
may be, a broken item) gives None: pydicom reads the data set then, and says what is wrong.
"""

from __future__ import annotations

import struct
from collections.abc import Collection

from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag

_TAG_AND_LENGTH = struct.Struct("<HHL")  # implicit VR element header; also items, delimiters
_TAG_VR_SHORT = struct.Struct("<HH2sH")  # explicit VR, 2-byte length
_LONG_LENGTH = struct.Struct("<L")
UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xE000, 0xE00D, 0xE0DD  # in group FFFE

# Explicit VRs with a 4-byte length after 2 reserved bytes (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS",
                        b"LO", b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL",
                        b"US"})


class Short(Exception):
    """The bytes end before the last wanted element could be passed."""


class _Unusual(Exception):
    """Something pydicom should read (and judge)."""


def scan(data: bytes | memoryview, *, implicit: bool, wanted: Collection[int], last: int,
         whole: bool) -> dict[BaseTag, RawDataElement] | None:
    """The wanted top-level elements of a Little Endian data set, up to tag ``last``.

    ``whole``: ``data`` is the whole data set (its end is the data set's end); otherwise
    running out of bytes before ``last`` raises ``Short``. None: leave it to pydicom."""
    view = memoryview(data)
    found: dict[BaseTag, RawDataElement] = {}
    position = 0
    try:
        while position < len(view):
            tag, vr, length, start = _header(view, position, implicit)
            if tag > last:
                return found
            if length == UNDEFINED:
                end, value_end = _skip_sequence(view, start, implicit or vr == b"UN")
            else:
                end = value_end = start + length
                if end > len(view):
                    raise Short
            if tag in wanted:
                found[BaseTag(tag)] = RawDataElement(
                    BaseTag(tag), None if implicit else vr.decode("ascii"),
                    value_end - start, bytes(view[start:value_end]), start, implicit, True)
            position = end
    except _Unusual:
        return None
    except Short:
        if whole:
            return None  # the data set itself is cut short: pydicom says how
        raise
    if not whole:
        raise Short
    return found


def _header(view: memoryview, position: int, implicit: bool) -> tuple[int, bytes, int, int]:
    """(tag, VR or b"", value length, where the value starts) of the element at ``position``."""
    if position + 8 > len(view):
        raise Short
    if implicit:
        group, element, length = _TAG_AND_LENGTH.unpack_from(view, position)
        return (group << 16) | element, b"", length, position + 8
    group, element, vr, length = _TAG_VR_SHORT.unpack_from(view, position)
    if group == 0xFFFE:
        raise _Unusual  # an item or delimiter where an element belongs
    if vr in _SHORT_VRS:
        return (group << 16) | element, vr, length, position + 8
    if vr not in _LONG_VRS:
        raise _Unusual  # not an explicit VR (pydicom guesses implicit VR then)
    if position + 12 > len(view):
        raise Short
    length = _LONG_LENGTH.unpack_from(view, position + 8)[0]
    if length == UNDEFINED and vr not in (b"SQ", b"UN"):
        raise _Unusual  # encapsulated pixel data comes after the elements wanted
    return (group << 16) | element, vr, length, position + 12


def _skip_sequence(view: memoryview, position: int, implicit: bool) -> tuple[int, int]:
    """Walk a sequence of undefined length from its first item: returns (the position after
    its Sequence Delimitation Item, the position of that item). The items of a UN element of
    undefined length are Implicit VR Little Endian (PS3.5 6.2.2)."""
    while True:
        if position + 8 > len(view):
            raise Short
        group, element, length = _TAG_AND_LENGTH.unpack_from(view, position)
        if group != 0xFFFE:
            raise _Unusual
        if element == _SEQUENCE_END:
            return position + 8, position
        if element != _ITEM:
            raise _Unusual
        position += 8
        if length != UNDEFINED:
            position += length
            continue
        position = _skip_item(view, position, implicit)


def _skip_item(view: memoryview, position: int, implicit: bool) -> int:
    """Walk an item of undefined length: the position after its Item Delimitation Item."""
    while True:
        if position + 8 > len(view):
            raise Short
        group, element = struct.unpack_from("<HH", view, position)
        if group == 0xFFFE:
            if element != _ITEM_END:
                raise _Unusual
            return position + 8
        _tag, vr, length, start = _header(view, position, implicit)
        if length == UNDEFINED:
            position = _skip_sequence(view, start, implicit or vr == b"UN")[0]
        else:
            position = start + length
