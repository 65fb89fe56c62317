"""The embedded Document Registry: ITI-42 in, ITI-18 stored queries out.

For standalone use, the demo and the tests; never the default in production. Functions take
and return lxml elements; the SOAP endpoints that carry them live elsewhere.
"""

from __future__ import annotations

from lxml.etree import _Element
from sqlalchemy.engine import Engine

from xds.registry import iti18, iti42


class EmbeddedRegistry:
    """A Document Registry on a SQLAlchemy engine (SQLite or PostgreSQL).

    The registry tables must exist (``xds.db.create_all`` or
    ``xds.registry.store.create_tables``).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def register(self, submit_objects_request: _Element) -> _Element:
        """ITI-42: register a ``lcm:SubmitObjectsRequest``; return ``rs:RegistryResponse``."""
        return iti42.register(self.engine, submit_objects_request)

    def stored_query(self, adhoc_query_request: _Element) -> _Element:
        """ITI-18: answer a ``query:AdhocQueryRequest`` with ``query:AdhocQueryResponse``."""
        return iti18.stored_query(self.engine, adhoc_query_request)


__all__ = ["EmbeddedRegistry"]
