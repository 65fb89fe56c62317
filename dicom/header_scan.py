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

from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag

_TAG_AND_LENGTH = struct.Struct("<HHL")  # implicit VR element header; also items, delimiters
_TAG = struct.Struct("<HH")
_TAG_VR_SHORT = struct.Struct("<HH2sH")  # explicit VR, 2-byte length
_LONG_LENGTH = struct.Struct("<L")
UNDEFINED = 0xFFFFFFFF
# Sequences nested deeper than this are left to pydicom (real data sets nest a few levels).
MAX_DEPTH = 16
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
                _check_sequence(view, tag, vr, start)
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


def _skip_sequence(view: memoryview, position: int, implicit: bool,
                   depth: int = 1) -> tuple[int, int]:
    """Walk a sequence of undefined length from its first item: returns (the position after
    its Sequence Delimitation Item, the position of that item). The items of a UN element of
    undefined length are Implicit VR Little Endian (PS3.5 6.2.2). Each item's elements are
    walked too, as pydicom reads them, so that a broken one is pydicom's to judge."""
    if depth > MAX_DEPTH:
        raise _Unusual
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
        if length == UNDEFINED:
            position = _skip_item(view, position, implicit, depth)
        else:
            end = position + length
            if end > len(view):
                raise Short
            while position < end:
                position = _skip_element(view, position, implicit, depth)
            if position != end:
                raise _Unusual  # an element runs past its item's end


def _skip_item(view: memoryview, position: int, implicit: bool, depth: int) -> int:
    """Walk an item of undefined length: the position after its Item Delimitation Item."""
    while True:
        if position + 8 > len(view):
            raise Short
        group, element = _TAG.unpack_from(view, position)
        if group == 0xFFFE:
            if element != _ITEM_END:
                raise _Unusual
            return position + 8
        position = _skip_element(view, position, implicit, depth)


def _skip_element(view: memoryview, position: int, implicit: bool, depth: int) -> int:
    """The position after the element at ``position``, inside an item."""
    tag, vr, length, start = _header(view, position, implicit)
    if tag >> 16 == 0xFFFE:
        raise _Unusual  # an item or delimiter where an element belongs
    if length == UNDEFINED:
        _check_sequence(view, tag, vr, start)
        return _skip_sequence(view, start, implicit or vr == b"UN", depth + 1)[0]
    return start + length


def _check_sequence(view: memoryview, tag: int, vr: bytes, start: int) -> None:
    """An element of undefined length is walked as a sequence where pydicom reads it as one:
    SQ, UN (PS3.5 6.2.2), and in Implicit VR a tag the dictionary calls SQ, or an unknown tag
    whose value starts with an item. pydicom reads any other as bytes up to the first Sequence
    Delimitation Item: that is its to do."""
    if vr == b"SQ" or (vr == b"UN" and config.settings.infer_sq_for_un_vr):
        return
    if vr:
        raise _Unusual
    try:
        if dictionary_VR(tag) == "SQ":
            return
    except KeyError:  # private or unknown: pydicom looks for an item
        if start + 4 <= len(view) and _TAG.unpack_from(view, start) == (0xFFFE, _ITEM):
            return
        if start + 4 > len(view):
            raise Short from None
    raise _Unusual
