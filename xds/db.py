"""Database access shared by the repository, the embedded registry and the publishing jobs.

Each module declares its own tables on ``metadata``; ``create_engine`` makes the engine and
``create_all`` creates every table that has been declared. Uniqueness rules live in the
database as constraints, so that several service processes can share one database.
"""

from __future__ import annotations

from sqlalchemy import MetaData, event
from sqlalchemy import create_engine as _sa_create_engine
from sqlalchemy.engine import Engine

metadata = MetaData()


def create_engine(url: str) -> Engine:
    """Make an engine for ``url``; SQLite gets WAL mode and a busy timeout.

    Statement parameters are left out of database errors: they hold patient names, IDs and
    birth dates, and an error message ends up in the log."""
    if url.startswith("sqlite"):
        engine = _sa_create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk when it returns (an acknowledged instance stays indexed).
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine

    return _sa_create_engine(url, pool_pre_ping=True, hide_parameters=True)


def create_all(engine: Engine) -> None:
    """Create every declared table (the XDS tables here; the DICOM index has its own)."""
    # Importing the modules registers their tables on ``metadata``.
    from xds import repository_store  # noqa: F401
    from xds.registry import store  # noqa: F401
    from xds import jobs  # noqa: F401

    metadata.create_all(engine)
