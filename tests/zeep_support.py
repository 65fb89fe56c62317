"""zeep 4.3 as an independent SOAP client of the service, with its known limits worked around here
(never in the server):

* zeep cannot send MTOM: ``MtomTransport`` moves the base64 text of chosen elements (by default
  ``xds:Document``) into XOP attachments of a multipart/related package, root part first.
* zeep takes the first MIME part of a reply as the root and strips CR/LF from both ends of a
  binary attachment: the transport keeps each raw reply (``last_response``) so that a test can
  decode the package itself with ``tests.repository_helpers.read_answer``.
"""

from __future__ import annotations

import base64
import uuid

from lxml import etree
from zeep.transports import Transport

from xds import ebrim

XOP_NS = "http://www.w3.org/2004/08/xop/include"


class MtomTransport(Transport):
    """Sends every request as an MTOM/XOP package; the text of each element named in
    ``optimized`` (Clark notation) travels as a binary attachment."""

    def __init__(self, optimized: tuple[str, ...] = (ebrim.q("xds", "Document"),), **kwargs):
        super().__init__(**kwargs)
        self.optimized = optimized
        self.last_response = None
        self.sent_attachments: dict[str, bytes] = {}

    def post_xml(self, address, envelope, headers):
        attachments = {}
        for tag in self.optimized:
            for element in envelope.iter(tag):
                content_id = f"{uuid.uuid4().hex}@zeep-test"
                attachments[content_id] = base64.b64decode(element.text or "")
                element.text = None
                etree.SubElement(element, f"{{{XOP_NS}}}Include", nsmap={"xop": XOP_NS},
                                 href=f"cid:{content_id}")
        self.sent_attachments = attachments

        # zeep's SOAP 1.2 Content-Type carries the action; keep it on the package.
        soap_type = headers.get("Content-Type", "application/soap+xml")
        action = soap_type.partition("action=")[2].strip('"; ')
        boundary = f"zeep-mtom-{uuid.uuid4().hex}"
        root_id = f"root-{uuid.uuid4().hex}@zeep-test"
        headers = dict(headers)
        headers["Content-Type"] = (
            f'multipart/related; type="application/xop+xml"; boundary="{boundary}"; '
            f'start="<{root_id}>"; start-info="application/soap+xml"; action="{action}"')

        pieces = [
            f"--{boundary}\r\nContent-Type: application/xop+xml; charset=UTF-8; "
            f'type="application/soap+xml"\r\nContent-Transfer-Encoding: binary\r\n'
            f"Content-ID: <{root_id}>\r\n\r\n".encode(),
            etree.tostring(envelope, xml_declaration=True, encoding="UTF-8"),
        ]
        for content_id, data in attachments.items():
            pieces.append(f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                          f"Content-Transfer-Encoding: binary\r\nContent-ID: <{content_id}>\r\n\r\n".encode())
            pieces.append(data)
        pieces.append(f"\r\n--{boundary}--\r\n".encode())

        response = self.post(address, b"".join(pieces), headers)
        self.last_response = response
        return response


class RecordingTransport(Transport):
    """A plain zeep transport that keeps the last raw reply."""

    last_response = None

    def post_xml(self, address, envelope, headers):
        self.last_response = super().post_xml(address, envelope, headers)
        return self.last_response


def slot(name: str, *values: str) -> dict:
    return {"name": name, "ValueList": {"Value": list(values)}}


def localized(text: str) -> dict:
    return {"LocalizedString": [{"value": text}]}
