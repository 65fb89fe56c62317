"""ITI-42 Register Document Set-b, as the repository sends it.

Two registries are possible: the embedded one, called in-process, and an external one reached
over SOAP 1.2 with WS-Addressing. Both answer with the status and the RegistryErrors of the
registry's RegistryResponse; an unreachable registry becomes XDSRegistryNotAvailable.
"""

from __future__ import annotations

import logging
from typing import Protocol

from lxml import etree
from starlette.concurrency import run_in_threadpool

from soap.client import SoapClient, SoapTransportError
from soap.faults import SoapFault
from xds import ebrim
from xds.errors import RegistryError, effective_status, parse_registry_response

log = logging.getLogger(__name__)


class Registry(Protocol):
    async def register(self, submit_objects_request: etree._Element) -> tuple[str, list[RegistryError]]:
        ...


class InProcessRegistry:
    """The embedded Document Registry, called without a network hop."""

    def __init__(self, embedded_registry):
        self.embedded = embedded_registry

    async def register(self, submit_objects_request):
        response = await run_in_threadpool(self.embedded.register, submit_objects_request)
        status, errors = parse_registry_response(response)
        return effective_status(status, errors), errors


class RemoteRegistry:
    """An external Document Registry at ``url``."""

    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url
        self.client = SoapClient(timeout=timeout)

    async def register(self, submit_objects_request):
        try:
            reply = await self.client.call(self.url, ebrim.ITI42_ACTION, submit_objects_request)
        except SoapTransportError as exc:
            log.warning("registry %s not reachable: %s", self.url, exc)
            return ebrim.FAILURE, [
                RegistryError("XDSRegistryNotAvailable", f"the Document Registry could not be reached: {exc}")
            ]
        except SoapFault as exc:
            return ebrim.FAILURE, [
                RegistryError("XDSRegistryError", f"the Document Registry answered with a SOAP fault: {exc.reason}")
            ]

        body = reply.envelope_root.find(f"{{{_SOAP12}}}Body")
        response = None if body is None else body.find(ebrim.q("rs", "RegistryResponse"))
        if response is None:
            return ebrim.FAILURE, [
                RegistryError("XDSRegistryError", "the Document Registry's answer holds no RegistryResponse")
            ]
        status, errors = parse_registry_response(response)
        return effective_status(status, errors), errors


_SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
