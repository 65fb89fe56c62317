"""Helpers for the repository tests: an in-process service, and an independent reading of its
answers (the standard library's MIME parser, not the project's own MTOM reader)."""

from __future__ import annotations

import email.parser
import email.policy
import uuid
from dataclasses import dataclass

from lxml import etree

from xds import ebrim
from xds.config import Settings

SOAP = "http://www.w3.org/2003/05/soap-envelope"
WSA = "http://www.w3.org/2005/08/addressing"


def settings_for(tmp_path, **overrides) -> Settings:
    settings = Settings()
    settings.storage.data_dir = str(tmp_path / "data")
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        setattr(getattr(settings, section), key, value)
    return settings


@dataclass
class Answer:
    status_code: int
    envelope: etree._Element
    attachments: dict[str, bytes]
    is_mtom: bool

    @property
    def body(self) -> etree._Element:
        return self.envelope.find(f"{{{SOAP}}}Body")[0]

    @property
    def action(self) -> str:
        return self.envelope.findtext(f"{{{SOAP}}}Header/{{{WSA}}}Action")

    def registry_response(self) -> etree._Element:
        body = self.body
        if body.tag == ebrim.q("rs", "RegistryResponse"):
            return body
        return body.find(ebrim.q("rs", "RegistryResponse"))

    @property
    def status(self) -> str:
        return self.registry_response().get("status")

    @property
    def error_codes(self) -> list[str]:
        return [e.get("errorCode") for e in self.registry_response().iter(ebrim.q("rs", "RegistryError"))]

    @property
    def errors(self) -> list[etree._Element]:
        return list(self.registry_response().iter(ebrim.q("rs", "RegistryError")))

    def fault_code(self) -> tuple[str, str | None]:
        fault = self.body
        assert fault.tag == f"{{{SOAP}}}Fault", etree.tostring(fault)[:300]
        code = fault.findtext(f"{{{SOAP}}}Code/{{{SOAP}}}Value")
        subcode = fault.findtext(f"{{{SOAP}}}Code/{{{SOAP}}}Subcode/{{{SOAP}}}Value")
        return code.split(":")[-1], subcode.split(":")[-1] if subcode else None

    def documents(self) -> dict[str, tuple[str, bytes]]:
        """DocumentUniqueId -> (mimeType, bytes) of an ITI-43/RAD-69 response."""
        found = {}
        for response in self.body.findall(ebrim.q("xds", "DocumentResponse")):
            unique_id = response.findtext(ebrim.q("xds", "DocumentUniqueId"))
            document = response.find(ebrim.q("xds", "Document"))
            include = document.find(f"{{{ebrim.XOP}}}Include")
            if include is not None:
                content_id = include.get("href")[len("cid:"):]
                from urllib.parse import unquote

                data = self.attachments[unquote(content_id)]
            else:
                import base64

                data = base64.b64decode(document.text or "")
            found[unique_id] = (response.findtext(ebrim.q("xds", "mimeType")), data)
        return found


def read_answer(response) -> Answer:
    """Parse an HTTP response of the service with the standard library's MIME parser."""
    content_type = response.headers["content-type"]
    if not content_type.startswith("multipart/related"):
        return Answer(response.status_code, etree.fromstring(response.content), {}, False)

    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + response.content)
    start = message.get_param("start")
    parts = list(message.iter_parts())
    root = parts[0]
    attachments = {}
    for part in parts:
        content_id = (part["Content-ID"] or "").strip().strip("<>")
        if start and f"<{content_id}>" == start.strip():
            root = part
        attachments[content_id] = part.get_payload(decode=True)
    return Answer(response.status_code, etree.fromstring(root.get_payload(decode=True)), attachments, True)


def retrieve_request(repository_unique_id: str, *document_unique_ids: str, home: str | None = None) -> bytes:
    from tests.corpus import wrap_in_envelope

    requests = "".join(
        "<xds:DocumentRequest>"
        + (f"<xds:HomeCommunityId>{home}</xds:HomeCommunityId>" if home else "")
        + f"<xds:RepositoryUniqueId>{repository_unique_id}</xds:RepositoryUniqueId>"
        f"<xds:DocumentUniqueId>{unique_id}</xds:DocumentUniqueId></xds:DocumentRequest>"
        for unique_id in document_unique_ids
    )
    body = f'<xds:RetrieveDocumentSetRequest xmlns:xds="{ebrim.XDS}">{requests}</xds:RetrieveDocumentSetRequest>'
    return wrap_in_envelope(body.encode(), ebrim.ITI43_ACTION)


def new_uuid() -> str:
    return f"urn:uuid:{uuid.uuid4()}"
