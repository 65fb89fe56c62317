"""Fixtures and helpers for the metadata, validation and embedded-registry tests.

* ``db_url`` runs a test on SQLite (in tmp_path) and on PostgreSQL when
  ``XDSI_TEST_POSTGRES_URL`` is set; without it the PostgreSQL run is skipped locally and
  fails under CI (``CI=true``), so CI cannot silently lose that coverage.
* ``registry_engine`` is an engine on that database with fresh registry tables.
* ``ebrs_schema`` loads an official ebRS schema (test oracle) offline.
* ``corpus_request`` pulls the ``lcm:SubmitObjectsRequest`` out of a corpus file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from functools import lru_cache

import pytest
from lxml import etree
from sqlalchemy.engine import Engine

from tests.conftest import CORPUS, SCHEMAS
from xds import ebrim
from xds.db import create_engine
from xds.registry.store import REGISTRY_TABLES, create_tables

EBRS = SCHEMAS / "ihe-iti" / "schema" / "ebRS"
XML_XSD = SCHEMAS / "w3c-oasis" / "xml.xsd"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    url = os.environ.get("XDSI_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail(
                "CI=true but XDSI_TEST_POSTGRES_URL is not set; .ci/run must start PostgreSQL"
            )
        pytest.skip("XDSI_TEST_POSTGRES_URL is not set")
    return url


@pytest.fixture
def registry_engine(db_url: str) -> Iterator[Engine]:
    engine = create_engine(db_url)
    # A shared PostgreSQL database keeps rows between tests: start each test from empty tables.
    from xds.db import metadata

    metadata.drop_all(engine, tables=list(REGISTRY_TABLES))
    create_tables(engine)
    yield engine
    engine.dispose()


class _OfflineResolver(etree.Resolver):
    """rim.xsd imports xml.xsd by its W3C URL; serve the local copy instead of the network."""

    def resolve(self, url, public_id, context):  # type: ignore[no-untyped-def]
        if url and url.endswith("xml.xsd"):
            return self.resolve_filename(str(XML_XSD), context)
        return None


@lru_cache(maxsize=None)
def ebrs_schema(name: str) -> etree.XMLSchema:
    """The official ebRS 3.0 schema ``name`` (rim.xsd, rs.xsd, lcm.xsd, query.xsd)."""
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    parser.resolvers.add(_OfflineResolver())
    return etree.XMLSchema(etree.parse(str(EBRS / name), parser))


def assert_schema_valid(element: etree._Element, schema_name: str) -> None:
    schema = ebrs_schema(schema_name)
    # Validate a standalone copy so that the element is the document root.
    document = etree.fromstring(etree.tostring(element))
    assert schema.validate(document), schema.error_log.filter_from_errors()


def corpus_request(name: str) -> etree._Element:
    """The ``lcm:SubmitObjectsRequest`` inside a corpus file (bare XML or MIME body text)."""
    data = (CORPUS / name).read_bytes()
    if name.endswith(".txt"):
        # A MIME body: cut the SOAP envelope out of the root part, crudely but enough here.
        start = re.search(rb"<(\w+:)?Envelope\b", data)
        end = re.search(rb"</(\w+:)?Envelope>", data)
        assert start and end, f"no SOAP envelope in {name}"
        data = data[start.start() : end.end()]
    root = etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True))
    if root.tag == ebrim.q("lcm", "SubmitObjectsRequest"):
        return root
    found = next(root.iter(ebrim.q("lcm", "SubmitObjectsRequest")), None)
    assert found is not None, f"no SubmitObjectsRequest in {name}"
    return found
