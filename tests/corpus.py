"""Turn the public sample messages of ``shared/corpus`` into HTTP requests to replay.

The files come in several forms (see the corpus's SOURCES.md): an entity body with its
Content-Type in a companion test plan, a whole HTTP request, a header block alone, a bare SOAP
envelope, or a bare ProvideAndRegister body that needs an envelope. ``request(name, crlf)`` gives
(content_type, body) for each; with ``crlf`` every bare LF becomes CRLF, as MIME requires.
"""

from __future__ import annotations

import re
import uuid

from tests.conftest import CORPUS

GEMATIK_CONTENT_TYPE = (
    'multipart/related; start-info="application/soap+xml"; type="application/xop+xml"; '
    'action="urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"; boundary=_MIME_MTOM_Boundary_'
)


def to_crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def read(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def body_with_testplan(body_name: str, testplan_name: str, crlf: bool = False) -> tuple[str, bytes]:
    """A ``*-body.txt`` file with the Content-Type from its test plan's ``<Headers>``."""
    plan = read(testplan_name).decode("utf-8")
    content_type = re.search(r"Content-Type:\s*(.+?)\s*\n", plan).group(1).strip()
    body = read(body_name)
    return content_type, to_crlf(body) if crlf else body


def http_request(name: str, crlf: bool = False) -> tuple[str, bytes]:
    """A file holding a request line, headers, a blank line and the body."""
    data = read(name).replace(b"\r\n", b"\n")
    head, _, body = data.partition(b"\n\n")
    headers = {}
    for line in head.split(b"\n")[1:]:
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    return headers["content-type"], to_crlf(body) if crlf else body


def boundary_test_request(crlf: bool = False) -> tuple[str, bytes]:
    """The WCF header block of ``nist-boundryTest-request_hdr.txt`` with a body built like the
    WCF DICOM submission, re-framed with that header's boundary."""
    head = read("nist-boundryTest-request_hdr.txt").decode("latin-1")
    content_type = re.search(r"content-type:\s*(.+?)\r?\n", head).group(1).strip()
    boundary = re.search(r'boundary="([^"]+)"', content_type).group(1)
    _, body = body_with_testplan("nist-PnrXop-dicom-body.txt", "nist-PnrXop-dicom-testplan.xml", crlf)
    old = b"uuid:376733a6-6a2d-4583-a687-04c08acf6a49+id=17"
    return content_type, body.replace(old, boundary.encode("ascii"))


def wrap_in_envelope(body_xml: bytes, action: str) -> bytes:
    """A SOAP 1.2 envelope with WS-Addressing around a bare body element (XML declaration dropped)."""
    body_xml = re.sub(rb"^\s*<\?xml[^>]*\?>", b"", body_xml)
    return (
        b'<soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope" '
        b'xmlns:wsa="http://www.w3.org/2005/08/addressing"><soap:Header>'
        b'<wsa:Action soap:mustUnderstand="true">' + action.encode() + b"</wsa:Action>"
        b"<wsa:MessageID>urn:uuid:" + str(uuid.uuid4()).encode() + b"</wsa:MessageID>"
        b"<wsa:ReplyTo><wsa:Address>http://www.w3.org/2005/08/addressing/anonymous</wsa:Address></wsa:ReplyTo>"
        b"</soap:Header><soap:Body>" + body_xml + b"</soap:Body></soap:Envelope>"
    )


def mtom_single_part(envelope: bytes, action: str) -> tuple[str, bytes]:
    """An MTOM package whose only part is the envelope (documents inline, or none)."""
    boundary = "MIMEBoundary_" + uuid.uuid4().hex
    content_type = (f'multipart/related; boundary="{boundary}"; type="application/xop+xml"; '
                    f'start="<root@test>"; start-info="application/soap+xml"; action="{action}"')
    body = (
        f"--{boundary}\r\nContent-Type: application/xop+xml; charset=UTF-8; type=\"application/soap+xml\"\r\n"
        f"Content-Transfer-Encoding: binary\r\nContent-ID: <root@test>\r\n\r\n"
    ).encode() + envelope + f"\r\n--{boundary}--\r\n".encode()
    return content_type, body


def mtom_with_attachments(envelope: bytes, attachments: dict[str, tuple[str, bytes]], action: str) -> tuple[str, bytes]:
    """An MTOM package: the envelope, then one part per content id -> (content type, bytes)."""
    content_type, body = mtom_single_part(envelope, action)
    boundary = re.search(r'boundary="([^"]+)"', content_type).group(1).encode()
    body = body[: body.rindex(b"--" + boundary + b"--")]
    for content_id, (part_type, data) in attachments.items():
        body += (b"--" + boundary + b"\r\nContent-Type: " + part_type.encode()
                 + b"\r\nContent-Transfer-Encoding: binary\r\nContent-ID: <" + content_id.encode() + b">\r\n\r\n"
                 + data + b"\r\n")
    return content_type, body + b"--" + boundary + b"--\r\n"
