"""Starting and stopping the whole service: HTTP endpoints, DICOM archive, publishing worker."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
from pathlib import Path

import uvicorn
from sqlalchemy.engine import make_url

from xds.config import Settings
from xds.db import create_all, create_engine

log = logging.getLogger(__name__)


class StartError(RuntimeError):
    """A command cannot start: the message says why, in the user's terms."""


def open_engine(settings: Settings, must_exist: bool = False):
    """The database engine, tables made. ``must_exist``: for commands that use the running
    service's database, a SQLite file that is not there is an error, not a new database."""
    url = make_url(settings.database_url)
    sqlite_file = (url.get_backend_name() == "sqlite" and url.database
                   and url.database != ":memory:" and not url.query.get("uri"))
    if must_exist and sqlite_file and not Path(url.database).exists():
        raise StartError(f"no database at {url.database}: run this in the service's working "
                         f"folder, or give its configuration (xdsi --config FILE ...)")
    if sqlite_file:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.database_url)
    create_all(engine)
    return engine


def open_archive(settings: Settings, engine=None, blobstore=None):
    from dicom.archive import Archive
    from dicom.index import create_index_tables
    from xds.blobstore import FileBlobStore

    engine = engine or open_engine(settings)
    create_index_tables(engine)
    return Archive(engine, blobstore or FileBlobStore(settings.blob_path))


def build_app(settings: Settings, start_dicom: bool = True, start_worker: bool = True):
    """The Starlette application with every part wired, started and stopped by its lifespan."""
    from dicom.scp import DicomServer
    from xds.imaging_source import imaging_source_routes
    from xds.jobs import JobQueue, ManifestLedger
    from xds.publisher import Publisher
    from xds.service import Components, create_app

    components = Components(settings)
    components.archive = open_archive(settings, components.engine, components.blobstore)
    components.jobs = JobQueue(components.engine)
    components.publisher = Publisher(settings, components.archive, components.blobstore, components.jobs,
                                     ManifestLedger(components.engine), repository=components.repository)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        dicom_server = None
        worker = None
        components.repository.clean_up_abandoned()
        if start_dicom and settings.dicom.enabled:
            dicom_server = DicomServer(components.archive, ae_title=settings.dicom.ae_title,
                                       host=settings.dicom.host, port=settings.dicom.port,
                                       move_destinations=_move_destinations(settings))
            dicom_server.start()
        if start_worker:
            worker = asyncio.create_task(components.publisher.worker())
        freeze_start_up_objects()
        try:
            yield
        finally:
            gc.unfreeze()  # for a process that starts the service again (the tests)
            if worker is not None:
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
            if dicom_server is not None:
                dicom_server.stop()

    return create_app(settings, components, extra_routes=imaging_source_routes(components), lifespan=lifespan)


def freeze_start_up_objects() -> None:
    """Once the service is up: what start-up built lives as long as the process (the DICOM AE's
    thousands of presentation contexts above all), so the cycle collector is told to stop
    walking it. Otherwise each full collection walks some 80,000 objects, about 30 ms during
    which the instance being stored waits (measured while storing 500 instances)."""
    gc.collect()
    gc.freeze()


def _move_destinations(settings: Settings) -> dict[str, tuple[str, int]]:
    """``dicom.move_destinations`` ({AE: "host:port"}) as {AE: (host, port)}."""
    destinations = {}
    for ae, address in settings.dicom.move_destinations.items():
        host, _, port = address.rpartition(":")
        destinations[ae] = (host, int(port))
    return destinations


def run_server(settings: Settings) -> int:
    # Taken ports are told plainly here, rather than by a traceback from deep in the start.
    _check_port(settings.server.host, settings.server.port, "HTTP (server.host, server.port)")
    if settings.dicom.enabled:
        _check_port(settings.dicom.host, settings.dicom.port, "DICOM (dicom.host, dicom.port)")
    app = build_app(settings)
    log.info("HTTP endpoints on %s (repository %s, imaging source %s)", settings.base_url,
             settings.repository.unique_id, settings.source.unique_id)
    uvicorn.run(app, host=settings.server.host, port=settings.server.port, log_level="info",
                timeout_keep_alive=30)
    return 0


def _check_port(host: str, port: int, what: str) -> None:
    """Bind (and let go) every address ``host`` stands for, IPv4 or IPv6, as the server will."""
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartError(f"{what} {host}:{port} cannot be used: {exc.strerror}") from None
    for family, kind, protocol, _name, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise StartError(f"{what} {host}:{port} cannot be used: {exc.strerror}") from None
