"""The Imaging Document Source's HTTP face: RAD-69 over SOAP, and WADO for the Retrieve URLs."""

from __future__ import annotations

from starlette.routing import Route

from soap.service import SoapService
from xds import ebrim
from xds.service import WSDL_DIR


def imaging_source_routes(components) -> list:
    from dicom.wado import wado_routes
    from xds.rad69 import ImagingDocumentSource, rad69_handler

    source = ImagingDocumentSource(components.settings.source.unique_id, components.archive)
    rad69 = SoapService(
        {ebrim.RAD69_ACTION: rad69_handler(source)},
        spool_factory=components.blobstore.spool,
        wsdl_path=WSDL_DIR / "XDS-I.b_ImagingDocumentSource.wsdl",
    )
    return [Route("/xdsi/imaging-source", rad69, methods=["GET", "POST"]), *wado_routes(components.archive)]
