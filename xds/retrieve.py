"""ITI-43 Retrieve Document Set, and the response form that RAD-69 shares with it.

The response lists the documents found as DocumentResponses whose bytes travel as MTOM
attachments streamed from the blob store; every document not served gets one RegistryError
whose location is its DocumentUniqueId. Status: Success when all were served, PartialSuccess
when some were, Failure when none were (ITI TF-3 Table 4.2.4.2-4).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from lxml import etree

from soap.mtom import OutgoingPart, xop_include
from xds import ebrim
from xds.errors import RegistryError, XdsError
from xds.repository_store import AVAILABLE, RepositoryStore


@dataclass
class DocumentRequest:
    repository_unique_id: str
    document_unique_id: str
    home_community_id: str | None = None


@dataclass
class RetrieveResult:
    """What a retrieve returns: served documents as (request, mime type, content), and errors.

    The content is a file, or an iterable of bytes produced as the response streams (a
    transcoded instance, for RAD-69)."""

    served: list[tuple[DocumentRequest, str, Path | Iterable[bytes]]] = field(default_factory=list)
    errors: list[RegistryError] = field(default_factory=list)

    def status(self) -> str:
        failed = any(error.severity == ebrim.SEVERITY_ERROR for error in self.errors)
        if not failed:
            return ebrim.SUCCESS
        return ebrim.PARTIAL_SUCCESS if self.served else ebrim.FAILURE

    def response(self) -> tuple[etree._Element, list[OutgoingPart]]:
        """The xds:RetrieveDocumentSetResponse element and the attachments it references."""
        from xds.errors import registry_response

        body = etree.Element(ebrim.q("xds", "RetrieveDocumentSetResponse"), nsmap={"xds": ebrim.XDS})
        body.append(registry_response(self.errors, status=self.status()))

        parts = []
        for request, mime_type, content in self.served:
            document_response = etree.SubElement(body, ebrim.q("xds", "DocumentResponse"))
            if request.home_community_id:
                _text(document_response, "HomeCommunityId", request.home_community_id)
            _text(document_response, "RepositoryUniqueId", request.repository_unique_id)
            _text(document_response, "DocumentUniqueId", request.document_unique_id)
            _text(document_response, "mimeType", mime_type)
            content_id = f"{uuid.uuid4().hex}@xdsi"
            xop_include(etree.SubElement(document_response, ebrim.q("xds", "Document")), content_id)
            if isinstance(content, Path):
                parts.append(OutgoingPart(content_id=content_id, content_type=mime_type, path=content))
            else:
                parts.append(OutgoingPart(content_id=content_id, content_type=mime_type, chunks=content))
        return body, parts


def parse_document_requests(parent: etree._Element) -> list[DocumentRequest]:
    """The xds:DocumentRequest children of ``parent`` (ITI-43 request, or a RAD-69 SeriesRequest)."""
    requests = []
    for element in parent.findall(ebrim.q("xds", "DocumentRequest")):
        requests.append(DocumentRequest(
            repository_unique_id=_child_text(element, "RepositoryUniqueId"),
            document_unique_id=_child_text(element, "DocumentUniqueId"),
            home_community_id=_child_text(element, "HomeCommunityId") or None,
        ))
    return requests


def retrieve_document_set(
    request: etree._Element,
    *,
    repository_unique_id: str,
    store: RepositoryStore,
    blobstore,
    max_documents: int,
) -> RetrieveResult:
    """Answer an ``xds:RetrieveDocumentSetRequest`` for the documents this repository holds."""
    requests = parse_document_requests(request)
    if not requests:
        raise XdsError("XDSRepositoryError", "RetrieveDocumentSetRequest holds no DocumentRequest")

    result = RetrieveResult()
    for index, document in enumerate(requests):
        if index >= max_documents:
            result.errors.append(RegistryError(
                "XDSTooManyResults",
                f"this repository serves at most {max_documents} documents per request",
                location=document.document_unique_id))
            continue
        if document.repository_unique_id != repository_unique_id:
            result.errors.append(RegistryError(
                "XDSUnknownRepositoryId",
                f"repository {document.repository_unique_id!r} is not this repository ({repository_unique_id})",
                location=document.document_unique_id or document.repository_unique_id))
            continue
        stored = store.get(document.document_unique_id) if document.document_unique_id else None
        if stored is None or stored.state != AVAILABLE:
            result.errors.append(RegistryError(
                "XDSDocumentUniqueIdError",
                f"document {document.document_unique_id!r} is not held by this repository",
                location=document.document_unique_id))
            continue
        result.served.append((document, stored.mime_type, blobstore.path(stored.blob_key)))
    return result


def _text(parent: etree._Element, local: str, value: str) -> None:
    etree.SubElement(parent, ebrim.q("xds", local)).text = value


def _child_text(element: etree._Element, local: str) -> str:
    child = element.find(ebrim.q("xds", local))
    return (child.text or "").strip() if child is not None else ""
