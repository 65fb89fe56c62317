"""Shared fixtures.

``SHARED`` is the folder of public test material that sits beside the checkout (``../shared``):
the corpus of sample messages, the official schemas and the NIST test studies. Tests read it
in place and never copy it into the project.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("XDSI_TEST_SHARED", ROOT.parent / "shared"))
CORPUS = SHARED / "corpus"
SCHEMAS = SHARED / "reference-schemas"
NIST_IDS = SHARED / "datasets" / "nist-ids"


def require_tool(name: str) -> str:
    """The path of a command-line tool the test needs; fail (not skip) when CI lacks it."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run must install it")
        pytest.skip(f"{name} is not installed")
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path) -> str:
    """A database for the whole service: SQLite in tmp_path, and the PostgreSQL server named by
    ``XDSI_TEST_POSTGRES_URL`` (emptied first). Without that variable the PostgreSQL run is
    skipped locally and fails under CI, so CI cannot lose that coverage silently."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'xdsi.db'}"
    url = os.environ.get("XDSI_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("CI is set but XDSI_TEST_POSTGRES_URL is not; .ci/run must start PostgreSQL")
        pytest.skip("XDSI_TEST_POSTGRES_URL is not set")
    reset_database(url)
    return url


def reset_database(url: str) -> None:
    """Drop every table of the service (XDS and DICOM index) so that a test starts empty."""
    from xds.db import create_engine, metadata
    import xds.db

    engine = create_engine(url)
    try:
        xds.db.create_all(engine)  # registers every table on the metadata
        metadata.drop_all(engine)
        try:
            from dicom.index import index_metadata
        except ImportError:
            index_metadata = None
        if index_metadata is not None:
            index_metadata.drop_all(engine)
    finally:
        engine.dispose()
