"""The running service: every component built from the settings, and the HTTP application.

Endpoints (each also answers ``GET ...?wsdl`` with the project's own WSDL):

- ``/xds/repository``: ITI-41 and ITI-43 (Document Repository);
- ``/xds/registry``: ITI-42 and ITI-18 (embedded Document Registry, when switched on);
- ``/xdsi/imaging-source``: RAD-69 (Imaging Document Source);
- ``/wado-rs/...`` and ``/wado``: WADO-RS and WADO-URI for the archived images.
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from soap.faults import SoapFault
from soap.service import SoapReply, SoapRequest, SoapService
from xds import ebrim
from xds.blobstore import FileBlobStore
from xds.config import Settings
from xds.db import create_all, create_engine
from xds.errors import XdsError
from xds.registry_client import InProcessRegistry, RemoteRegistry
from xds.repository import DocumentRepository
from xds.repository_store import RepositoryStore
from xds.retrieve import RetrieveResult, retrieve_document_set

log = logging.getLogger(__name__)

def _resource_folder(name: str) -> Path:
    """``wsdl`` or ``schemas``: beside the code in a checkout (and an editable install), or
    where pip put an installed wheel's data files (``share/xdsi/<name>`` under the scheme's
    data path: the environment, /usr/local, ~/.local...), as the installation records it."""
    beside = Path(__file__).resolve().parents[1] / name
    if beside.is_dir():
        return beside
    try:
        files = importlib.metadata.distribution("xdsi").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.parts[-4:-1] == ("share", "xdsi", name):
            return Path(file.locate()).resolve().parent
    return beside  # not found: the error names where it was looked for first


WSDL_DIR = _resource_folder("wsdl")
SCHEMA_DIR = _resource_folder("schemas")


class Components:
    """Everything the endpoints and the DICOM side share, made once per process."""

    def __init__(self, settings: Settings):
        self.settings = settings
        settings.data_path.mkdir(parents=True, exist_ok=True)

        self.engine = create_engine(settings.database_url)
        create_all(self.engine)
        self.blobstore = FileBlobStore(settings.blob_path)
        self.repository_store = RepositoryStore(self.engine)

        self.embedded_registry = None
        if settings.registry.embedded:
            from xds.registry import EmbeddedRegistry

            self.embedded_registry = EmbeddedRegistry(self.engine)
        if settings.repository.registry_url:
            registry = RemoteRegistry(settings.repository.registry_url,
                                      timeout=settings.repository.registry_timeout_seconds)
        else:
            registry = InProcessRegistry(self.embedded_registry)

        self.repository = DocumentRepository(
            settings.repository.unique_id, self.repository_store, self.blobstore, registry)


def repository_endpoint(components: Components) -> SoapService:
    settings = components.settings

    async def iti41(request: SoapRequest) -> SoapReply:
        body = _expect(request, "xds", "ProvideAndRegisterDocumentSetRequest")
        result = await components.repository.provide_and_register(body, request.content)
        return SoapReply(ebrim.ITI41_RESPONSE_ACTION, result.response())

    async def iti43(request: SoapRequest) -> SoapReply:
        body = _expect(request, "xds", "RetrieveDocumentSetRequest")
        try:
            result = await run_in_threadpool(
                retrieve_document_set, body,
                repository_unique_id=settings.repository.unique_id,
                store=components.repository_store,
                blobstore=components.blobstore,
                max_documents=settings.repository.max_documents_per_request,
            )
        except XdsError as exc:
            result = RetrieveResult(errors=list(exc.errors))
        response, parts = result.response()
        return SoapReply(ebrim.ITI43_RESPONSE_ACTION, response, parts)

    return SoapService(
        {ebrim.ITI41_ACTION: iti41, ebrim.ITI43_ACTION: iti43},
        spool_factory=components.blobstore.spool,
        wsdl_path=WSDL_DIR / "XDS.b_DocumentRepository.wsdl",
    )


def registry_endpoint(components: Components) -> SoapService:
    registry = components.embedded_registry

    async def iti42(request: SoapRequest) -> SoapReply:
        body = _expect(request, "lcm", "SubmitObjectsRequest")
        return SoapReply(ebrim.ITI42_RESPONSE_ACTION, await run_in_threadpool(registry.register, body))

    async def iti18(request: SoapRequest) -> SoapReply:
        body = _expect(request, "query", "AdhocQueryRequest")
        return SoapReply(ebrim.ITI18_RESPONSE_ACTION, await run_in_threadpool(registry.stored_query, body))

    return SoapService(
        {ebrim.ITI42_ACTION: iti42, ebrim.ITI18_ACTION: iti18},
        spool_factory=components.blobstore.spool,
        wsdl_path=WSDL_DIR / "XDS.b_DocumentRegistry.wsdl",
    )


def create_app(settings: Settings, components: Components | None = None, extra_routes=(),
               lifespan=None) -> Starlette:
    components = components or Components(settings)

    routes = [
        Route("/health", _health, methods=["GET"]),
        Route("/xds/repository", repository_endpoint(components), methods=["GET", "POST"]),
        # The WSDLs import their XSDs by relative location: serve them beside the endpoints.
        Mount("/schemas", StaticFiles(directory=SCHEMA_DIR), name="schemas"),
    ]
    if components.embedded_registry is not None:
        routes.append(Route("/xds/registry", registry_endpoint(components), methods=["GET", "POST"]))
    routes.extend(extra_routes)

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.components = components
    return app


async def _health(request):
    return JSONResponse({"status": "ok"})


def _expect(request: SoapRequest, prefix: str, local: str):
    body = request.envelope.body
    if body.tag != ebrim.q(prefix, local):
        raise SoapFault("Sender", f"the Body must hold {prefix}:{local} for this action, not {body.tag}")
    return body
