"""soap.mtom.read_message on the public corpus and on broken MIME.

Every MTOM/multipart sample of the corpus (SOURCES.md sections A and C) is read as stored and
with every bare LF turned into CRLF, fed in several chunk sizes. The expected sizes and SHA-1
values were worked out independently with the standard library's ``email`` parser. Broken MIME
must give a Sender fault that says what is wrong, and leave no spool file behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from soap.faults import SoapFault
from soap.mtom import IncomingMessage, read_message
from soap.spool import Spool
from soap.xml import SOAP12_ENV
from tests import corpus

ENVELOPE = f"{{{SOAP12_ENV}}}Envelope"
NIST_DOC_ID = "1.b5b57d7287e4fa4b528a8f050c41f8ad829c20332f23b48d@apache.org"
CXF_DOC_ID = "fdf975cc-9f08-4d94-b7f6-99f4807f3654-1@urn:ihe:iti:xds-b:2007"


class RecordingSpools:
    """A spool factory that remembers every file it made, to check that none is left over."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.paths: list[Path] = []

    def __call__(self) -> Spool:
        spool = Spool(self.directory)
        self.paths.append(spool.path)
        return spool

    def leftovers(self) -> list[Path]:
        return [path for path in self.paths if path.exists()]


@pytest.fixture
def spools(tmp_path) -> RecordingSpools:
    return RecordingSpools(tmp_path)


async def in_chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


def read(content_type: str, body: bytes, spools: Callable, chunk: int = 4096) -> IncomingMessage:
    return asyncio.run(read_message(content_type, in_chunks(body, chunk), spools))


def summary(message: IncomingMessage) -> list[tuple[str, int, str]]:
    """(content id, size, SHA-1) of each attachment, checked against the spooled file itself."""
    rows = []
    for content_id, attachment in message.attachments.items():
        data = attachment.path.read_bytes()
        assert (len(data), hashlib.sha1(data).hexdigest()) == (attachment.size, attachment.sha1)
        rows.append((content_id, attachment.size, attachment.sha1))
    return rows


# Corpus requests and responses ----------------------------------------------------------------


def gematik_retrieve_response(crlf: bool = False) -> tuple[str, bytes]:
    """Corpus 20: an HTTP response whose header block holds the Content-Type."""
    data = corpus.read("gematik-retrievedocument-resp.xop")
    head, _, body = data.partition(b"\r\n\r\n")
    content_type = re.search(rb"(?im)^content-type:\s*(.+?)\s*$", head).group(1).decode("latin-1")
    return content_type, corpus.to_crlf(body) if crlf else body


def dcm4chee_rad69_response(crlf: bool = False) -> tuple[str, bytes]:
    """Corpus 29: an HTTP response with a folded Content-Type header, unfolded here."""
    data = corpus.read("dcm4cheecs-rad69-response.txt").replace(b"\r\n", b"\n")
    head, _, body = data.partition(b"\n\n")
    unfolded = re.sub(rb"\n[ \t]+", b" ", head)
    content_type = (
        re.search(rb"(?im)^content-type:\s*(.+?)\s*$", unfolded).group(1).decode("latin-1")
    )
    return content_type, corpus.to_crlf(body) if crlf else body


def gematik_provide_and_register(crlf: bool = False) -> tuple[str, bytes]:
    body = corpus.read("gematik-provideandregister.xop")
    return corpus.GEMATIK_CONTENT_TYPE, corpus.to_crlf(body) if crlf else body


XOP_PLAN = "nist-PnrXop-Xop-testplan.xml"
SAMPLES: dict[str, Callable[[bool], tuple[str, bytes]]] = {
    "01-nist-Xop": lambda crlf: corpus.body_with_testplan(
        "nist-PnrXop-Xop-body.txt", XOP_PLAN, crlf
    ),
    "02-nist-NoXop": lambda crlf: corpus.body_with_testplan(
        "nist-PnrXop-NoXop-body.txt", XOP_PLAN, crlf
    ),
    "03-nist-encodedURL": lambda crlf: corpus.body_with_testplan(
        "nist-PnrXop-encodedURL-body.txt", XOP_PLAN, crlf
    ),
    "04-nist-dicom": lambda crlf: corpus.body_with_testplan(
        "nist-PnrXop-dicom-body.txt", "nist-PnrXop-dicom-testplan.xml", crlf
    ),
    "05-nist-http-mtom": lambda crlf: corpus.http_request("nist-http-mtom-pnr.txt", crlf),
    "06-nist-selftest-socket": lambda crlf: corpus.http_request(
        "nist-selftest-socket-request.txt", crlf
    ),
    "07-nist-boundryTest": corpus.boundary_test_request,
    "08-nist-http-simple": lambda crlf: corpus.http_request("nist-http-simple.txt", crlf),
    "13-gematik-pnr": gematik_provide_and_register,
    "20-gematik-retrieve-resp": gematik_retrieve_response,
}

# Per sample and framing (as stored, CRLF): (is MTOM, [(content id, size, SHA-1), ...]).
GEMATIK_PARTS_STORED = [
    (58946, "3a6c288a3b20d4272cade3be5ab32e8d91648004"),
    (146979, "52ed99a146e873ca6e501a272a59c8e54648fc49"),
    (15710, "19a20adfc2375a58f2303ec3be75e3cee6d01c2b"),
    (1717, "dbe42c8c7ef007af65ddbe9ba43a97024760667b"),
]
GEMATIK_PARTS_CRLF = [
    (59319, "ed2c884a224e354160a90c3332d258a65b50e5e6"),
    (147668, "b3eeb446c93e4d2dd5242743ca3facb1fe880df1"),
    (15710, "19a20adfc2375a58f2303ec3be75e3cee6d01c2b"),
    (1717, "dbe42c8c7ef007af65ddbe9ba43a97024760667b"),
]


def gematik_parts(figures: list[tuple[int, str]]) -> list[tuple[str, int, str]]:
    """The ten parts -11 .. -20: the four documents, then the same again with the first repeated."""
    order = [0, 1, 2, 3, 0, 0, 1, 2, 3, 0]
    return [
        (f"f7160cff-68d5-4192-839f-a1b4ae9ef55f-{11 + i}@urn:ihe:iti:xds-b:2007", *figures[k])
        for i, k in enumerate(order)
    ]


EXPECTED: dict[str, dict[bool, tuple[bool, list]]] = {
    "01-nist-Xop": {
        False: (True, [(NIST_DOC_ID, 36, "e543712c0e10501972de13a5bfcbe826c49feb75")]),
        True: (True, [(NIST_DOC_ID, 40, "e4f4de4023c5109e597922533a172c6449aacbe7")]),
    },
    "02-nist-NoXop": {False: (True, []), True: (True, [])},
    "03-nist-encodedURL": {
        False: (True, [(CXF_DOC_ID, 36, "e543712c0e10501972de13a5bfcbe826c49feb75")]),
        True: (True, [(CXF_DOC_ID, 40, "e4f4de4023c5109e597922533a172c6449aacbe7")]),
    },
    "04-nist-dicom": {False: (True, []), True: (True, [])},
    "05-nist-http-mtom": {
        False: (
            True,
            [
                (
                    "1.urn:uuid:3D4B161591CD1DEC0C1286850962319@apache.org",
                    1465,
                    "a2ffd43a4557af4174f11323928480a83f05d222",
                )
            ],
        ),
        True: (
            True,
            [
                (
                    "1.urn:uuid:3D4B161591CD1DEC0C1286850962319@apache.org",
                    1467,
                    "ed75b8e3895aeebb8cb37dd31b35aae57afc77cc",
                )
            ],
        ),
    },
    "06-nist-selftest-socket": {
        False: (
            True,
            [
                (
                    "1.urn:uuid:8D3C3AFA28B895245C1247499531173@apache.org",
                    8197,
                    "8a427f9c4895d46150fe3e1df26c26e79f9fccd6",
                )
            ],
        ),
        True: (
            True,
            [
                (
                    "1.urn:uuid:8D3C3AFA28B895245C1247499531173@apache.org",
                    8262,
                    "9923a6b9e46e13ce9f0521f11e328248bb4d29ee",
                )
            ],
        ),
    },
    "07-nist-boundryTest": {False: (True, []), True: (True, [])},
    "08-nist-http-simple": {False: (False, []), True: (False, [])},
    "13-gematik-pnr": {
        False: (
            True,
            [("Document0@PHRService.konlan", 1699, "d45c1a924fdadf6481371a03723c8643cdee666f")],
        ),
        True: (
            True,
            [("Document0@PHRService.konlan", 1717, "dbe42c8c7ef007af65ddbe9ba43a97024760667b")],
        ),
    },
    "20-gematik-retrieve-resp": {
        False: (True, gematik_parts(GEMATIK_PARTS_STORED)),
        True: (True, gematik_parts(GEMATIK_PARTS_CRLF)),
    },
}


@pytest.mark.parametrize("crlf", [False, True], ids=["as-stored", "crlf"])
@pytest.mark.parametrize("name", list(SAMPLES))
def test_corpus_message_root_parses_and_attachments_are_exact(name, crlf, spools):
    content_type, body = SAMPLES[name](crlf)
    message = read(content_type, body, spools)

    is_mtom, attachments = EXPECTED[name][crlf]
    assert message.envelope_root.tag == ENVELOPE
    assert message.is_mtom is is_mtom
    assert summary(message) == attachments

    message.discard()
    assert spools.leftovers() == []


@pytest.mark.parametrize("name", list(SAMPLES))
def test_corpus_message_gives_the_same_result_in_chunks_of_1_7_and_4096_bytes(name, spools):
    for crlf in (False, True):
        content_type, body = SAMPLES[name](crlf)
        results = []
        for chunk in (1, 7, 4096):
            message = read(content_type, body, spools, chunk)
            results.append((message.envelope_root.tag, summary(message)))
            message.discard()
        assert results[0] == results[1] == results[2]
        assert results[0][1] == EXPECTED[name][crlf][1]
    assert spools.leftovers() == []


def test_gematik_iso_8859_15_attachment_is_byte_exact(spools):
    raw = corpus.read("gematik-provideandregister.xop")
    start = raw.index(b'<?xml version="1.0" encoding="ISO-8859-15"?>')
    expected = raw[start : raw.rindex(b"\n--_MIME_MTOM_Boundary_--")]
    assert b"\xfc" in expected  # the byte that breaks a decode as UTF-8

    message = read(*gematik_provide_and_register(), spools)
    assert message.attachments["Document0@PHRService.konlan"].path.read_bytes() == expected
    message.discard()


def test_gematik_retrieve_response_has_ten_parts_and_a_partial_success_root(spools):
    message = read(*gematik_retrieve_response(), spools)
    assert len(message.attachments) == 10
    assert [a.size for a in message.attachments.values()] == [
        58946,
        146979,
        15710,
        1717,
        58946,
        58946,
        146979,
        15710,
        1717,
        58946,
    ]
    status = message.envelope_root.find(
        ".//{urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0}RegistryResponse"
    )
    assert status.get("status") == "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"
    message.discard()


def test_dcm4chee_rad69_response_is_refused(spools):
    # As published the body also lacks its closing delimiter: refused as a truncated package.
    content_type, body = dcm4chee_rad69_response()
    with pytest.raises(SoapFault) as caught:
        read(content_type, body, spools)
    assert caught.value.code == "Sender"
    assert "closing boundary" in caught.value.reason

    # With the delimiter added, the never-closed <DocumentUniqueId> is what is refused.
    boundary = re.search(r'boundary="([^"]+)"', content_type).group(1).encode()
    for crlf in (False, True):
        content_type, body = dcm4chee_rad69_response(crlf)
        newline = b"\r\n" if crlf else b"\n"
        with pytest.raises(SoapFault) as caught:
            read(content_type, body + newline + b"--" + boundary + b"--" + newline, spools)
        assert caught.value.code == "Sender"
        assert "not well-formed XML" in caught.value.reason
    assert spools.leftovers() == []


# Broken MIME ----------------------------------------------------------------------------------

CT = (
    'multipart/related; type="application/xop+xml"; boundary="B0"; start="<root@x>"; '
    'start-info="application/soap+xml"'
)
ROOT_PART = (
    b'--B0\r\nContent-Type: application/xop+xml; type="application/soap+xml"\r\n'
    b"Content-ID: <root@x>\r\n\r\n"
    b'<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body><a/></e:Body></e:Envelope>'
    b"\r\n"
)


def part(content_id: str, data: bytes, encoding: str = "binary") -> bytes:
    return (
        (
            f"--B0\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: {encoding}\r\n"
            f"Content-ID: <{content_id}>\r\n\r\n"
        ).encode()
        + data
        + b"\r\n"
    )


BIG = bytes(range(256)) * 400  # spans many chunks, so that a spool is open when the fault comes

BROKEN = {
    "no-boundary-parameter": (
        'multipart/related; type="application/xop+xml"',
        ROOT_PART + b"--B0--\r\n",
        "no boundary parameter",
    ),
    "truncated-without-closing-delimiter": (
        CT,
        ROOT_PART + part("a@x", BIG)[:-2],
        "closing boundary delimiter",
    ),
    "part-without-headers": (
        CT,
        ROOT_PART + b"--B0\r\n\r\nheaderless\r\n--B0--\r\n",
        "has no headers",
    ),
    "no-root-part-for-start": (
        CT.replace("root@x", "missing@x"),
        ROOT_PART + part("a@x", BIG) + b"--B0--\r\n",
        "<missing@x>",
    ),
    "duplicate-content-id": (
        CT,
        ROOT_PART + part("a@x", BIG) + part("a@x", b"again") + b"--B0--\r\n",
        "Content-ID <a@x>",
    ),
    "duplicate-of-the-root-content-id": (
        CT,
        ROOT_PART + part("root@x", b"again") + b"--B0--\r\n",
        "Content-ID <root@x>",
    ),
    "bad-base64-part": (
        CT,
        ROOT_PART + part("a@x", b"QUJD" * 5000 + b"!!!!", "base64") + b"--B0--\r\n",
        "not valid base64",
    ),
    "base64-part-with-incomplete-final-quantum": (
        CT,
        ROOT_PART + part("a@x", b"QUJD" * 5000 + b"QU", "base64") + b"--B0--\r\n",
        "not valid base64",
    ),
    "garbage-after-a-delimiter": (
        CT,
        ROOT_PART + part("a@x", BIG) + b"--B0 garbage\r\n" + part("b@x", b"x") + b"--B0--\r\n",
        "after a boundary delimiter",
    ),
    "no-delimiter-at-all": (CT, b"just some bytes\r\n", "no boundary delimiter"),
    "non-ascii-boundary": (CT.replace('"B0"', '"B\u00e9"'), ROOT_PART + b"--B0--\r\n", "not ASCII"),
    "attachment-without-content-id": (
        CT,
        ROOT_PART + b"--B0\r\nContent-Type: text/plain\r\n\r\nx\r\n--B0--\r\n",
        "no Content-ID",
    ),
}


@pytest.mark.parametrize("chunk", [1, 4096])
@pytest.mark.parametrize("case", list(BROKEN))
def test_malformed_mime_is_a_sender_fault_and_leaves_no_spool(case, chunk, spools):
    content_type, body, says = BROKEN[case]
    with pytest.raises(SoapFault) as caught:
        read(content_type, body, spools, chunk if len(body) < 50_000 else max(chunk, 7))
    assert caught.value.code == "Sender"
    assert says in caught.value.reason
    assert spools.leftovers() == []


def test_unsupported_media_type_is_a_sender_fault(spools):
    with pytest.raises(SoapFault) as caught:
        read("text/plain", b"hello", spools)
    assert caught.value.code == "Sender"
    assert "unsupported media type text/plain" in caught.value.reason


def test_rfc2231_boundary_parameter_is_understood(spools):
    body = ROOT_PART + part("a@x", b"payload") + b"--B0--\r\n"
    message = read("multipart/related; boundary*=us-ascii''B0; start=\"<root@x>\"", body, spools)
    assert message.attachments["a@x"].path.read_bytes() == b"payload"
    message.discard()


def test_bare_lf_framing_and_transport_padding_are_accepted(spools):
    body = (
        b"preamble\n--B0  \nContent-ID: <root@x>\n\n"
        b'<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body><a/></e:Body></e:Envelope>'
        b"\n--B0\t\ncontent-id: <a@x>\ncontent-type: text/plain\n\n--not a delimiter\n\n--B0--  \nepilogue"
    )
    for chunk in (1, 3, 4096):
        message = read("multipart/related; boundary=B0", body, spools, chunk)
        assert message.attachments["a@x"].path.read_bytes() == b"--not a delimiter\n"
        message.discard()
    assert spools.leftovers() == []


ENVELOPE_TEXT = (
    '<?xml version="1.0" encoding="{encoding}"?>\n'
    '<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body>'
    "<a>Grüße, Ørsted, façade</a></e:Body></e:Envelope>\n"
)


@pytest.mark.parametrize("encoding", ["ISO-8859-1", "UTF-16", "UTF-16BE", "UTF-16LE", "UTF-8"])
def test_root_part_in_the_encoding_its_xml_declares_is_parsed_from_bytes(encoding, spools):
    root = ENVELOPE_TEXT.format(encoding=encoding).encode(encoding.lower())
    body = (
        b'--B0\r\nContent-Type: application/xop+xml; type="application/soap+xml"\r\n'
        b"Content-ID: <root@x>\r\n\r\n" + root + b"\r\n--B0--\r\n"
    )
    for chunk in (1, 4096):
        message = read("multipart/related; boundary=B0", body, spools, chunk)
        assert message.envelope_root.findtext(f"{{{SOAP12_ENV}}}Body/a") == "Grüße, Ørsted, façade"
    plain = read("application/soap+xml", root, spools)
    assert plain.envelope_root.findtext(f"{{{SOAP12_ENV}}}Body/a") == "Grüße, Ørsted, façade"
