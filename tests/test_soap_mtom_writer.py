"""soap.mtom writers (mtom_response, inline_response) read back by read_message, XOP resolution,
bounded memory on a 300 MB part, and the reader's throughput on a 1 GB attachment."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Self

import pytest
from lxml import etree

from soap.envelope import build_envelope, parse_envelope
from soap.faults import SoapFault
from soap.mtom import (
    IncomingMessage,
    _packed,
    _read_ahead,
    OutgoingPart,
    document_content,
    inline_response,
    mtom_response,
    read_message,
    xop_include,
)
from soap.spool import Spool
from soap.xml import XOP_NS, parse_xml
from tests import corpus

XDS = "urn:ihe:iti:xds-b:2007"

PARTS = {
    "doc-1@xdsi": bytes(range(256)) * 41,
    # Content that looks like a delimiter line of this very package, and odd Content-ID characters.
    "1.urn:uuid:abc@urn:ihe:iti:xds-b:2007": b"\r\n--MIMEBoundary_\r\n--\r\n\n--x--\r\n" * 100,
    "empty@xdsi": b"",
    "crlf-at-end@xdsi": b"line\r\n",
}


def reply_envelope(content_ids: list[str]) -> etree._Element:
    body = etree.Element(f"{{{XDS}}}RetrieveDocumentSetResponse")
    for content_id in content_ids:
        document = etree.SubElement(
            etree.SubElement(body, f"{{{XDS}}}DocumentResponse"), f"{{{XDS}}}Document"
        )
        xop_include(document, content_id)
    return build_envelope(
        "urn:ihe:iti:2007:RetrieveDocumentSetResponse", body, relates_to="urn:uuid:1"
    )


async def collect(body: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in body])


async def rechunk(data: bytes, size: int) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


def read(content_type: str, data: bytes, tmp_path, chunk: int = 4096) -> IncomingMessage:
    return asyncio.run(read_message(content_type, rechunk(data, chunk), lambda: Spool(tmp_path)))


def documents(root: etree._Element) -> list[etree._Element]:
    return root.findall(f".//{{{XDS}}}Document")


def test_mtom_response_reads_back_with_the_same_bytes_for_every_part(tmp_path):
    # Half the parts come from files, half from iterators.
    parts = []
    for number, (content_id, data) in enumerate(PARTS.items()):
        if number % 2:
            path = tmp_path / f"part-{number}"
            path.write_bytes(data)
            parts.append(OutgoingPart(content_id, "application/octet-stream", path=path))
        else:
            parts.append(
                OutgoingPart(content_id, "application/dicom", chunks=iter([data[:7], data[7:]]))
            )
    envelope = reply_envelope(list(PARTS))
    expected_root = etree.tostring(envelope, method="c14n")

    content_type, body = mtom_response(envelope, parts)
    data = asyncio.run(collect(body))
    for chunk in (1, 4096):
        message = read(content_type, data, tmp_path, chunk)
        assert message.is_mtom
        assert etree.tostring(message.envelope_root, method="c14n") == expected_root
        for element, (content_id, payload) in zip(documents(message.envelope_root), PARTS.items()):
            attachment = document_content(element, message, lambda: Spool(tmp_path))
            assert attachment.content_id == content_id
            assert attachment.path.read_bytes() == payload
            assert (attachment.size, attachment.sha1) == (
                len(payload),
                hashlib.sha1(payload).hexdigest(),
            )
        assert parse_envelope(message.envelope_root).relates_to == "urn:uuid:1"
        message.discard()


def test_mtom_response_without_parts_is_still_multipart(tmp_path):
    envelope = build_envelope("urn:test:Reply", etree.Element("{urn:test}Ok"))
    content_type, body = mtom_response(envelope, [])
    assert content_type.startswith("multipart/related;")
    assert 'start-info="application/soap+xml"' in content_type
    message = read(content_type, asyncio.run(collect(body)), tmp_path)
    assert message.is_mtom and message.attachments == {}
    assert message.envelope_root.find(".//{urn:test}Ok") is not None


def test_inline_response_decodes_to_the_same_bytes(tmp_path):
    parts = [
        OutgoingPart(content_id, "application/octet-stream", chunks=iter([data[:5], data[5:]]))
        for content_id, data in PARTS.items()
    ]
    content_type, body = inline_response(reply_envelope(list(PARTS)), parts)
    assert content_type.startswith("application/soap+xml")

    data = asyncio.run(collect(body))
    root = parse_xml(data)
    assert root.find(f".//{{{XOP_NS}}}Include") is None
    texts = [element.text or "" for element in documents(root)]
    assert [base64.b64decode(text, validate=True) for text in texts] == list(PARTS.values())

    # And through the reader and document_content, as a receiver sees it.
    message = read(content_type, data, tmp_path)
    assert not message.is_mtom
    for element, payload in zip(documents(message.envelope_root), PARTS.values()):
        assert (
            document_content(element, message, lambda: Spool(tmp_path)).path.read_bytes() == payload
        )
    message.discard()
    assert list(tmp_path.glob("spool-*")) == []


def test_inline_response_with_an_unknown_part_is_a_clear_error():
    with pytest.raises(ValueError, match="no outgoing part has that Content-ID"):
        inline_response(reply_envelope(["missing@xdsi"]), [])


# XOP resolution on the corpus -----------------------------------------------------------------

PLAN = "nist-PnrXop-Xop-testplan.xml"


@pytest.mark.parametrize(
    "body_name, size, sha1",
    [
        ("nist-PnrXop-Xop-body.txt", 36, "e543712c0e10501972de13a5bfcbe826c49feb75"),
        # The href is percent-encoded, the Content-ID is not (RFC 2392).
        ("nist-PnrXop-encodedURL-body.txt", 36, "e543712c0e10501972de13a5bfcbe826c49feb75"),
        # Inline base64 inside an MTOM package: hashed over the decoded bytes.
        ("nist-PnrXop-NoXop-body.txt", 38, "27e60f9f5173903c2fa907baaaeb7af819913116"),
    ],
)
def test_corpus_document_content_resolves_xop_and_inline_base64(body_name, size, sha1, tmp_path):
    message = read(*corpus.body_with_testplan(body_name, PLAN), tmp_path)
    [element] = documents(message.envelope_root)
    attachment = document_content(element, message, lambda: Spool(tmp_path))
    assert (attachment.size, attachment.sha1) == (size, sha1)
    message.discard()
    assert list(tmp_path.glob("spool-*")) == []


def test_corpus_wcf_dicom_inline_base64_decodes_to_the_part10_file(tmp_path):
    message = read(
        *corpus.body_with_testplan("nist-PnrXop-dicom-body.txt", "nist-PnrXop-dicom-testplan.xml"),
        tmp_path,
    )
    [element] = documents(message.envelope_root)
    data = document_content(element, message, lambda: Spool(tmp_path)).path.read_bytes()
    assert len(data) == 6090
    assert data[128:132] == b"DICM"
    message.discard()


@pytest.mark.parametrize(
    "content, says",
    [
        (
            b'<xop:Include xmlns:xop="http://www.w3.org/2004/08/xop/include" href="cid:nobody@x"/>',
            "no MIME part has that Content-ID",
        ),
        (
            b'<xop:Include xmlns:xop="http://www.w3.org/2004/08/xop/include" href="http://127.0.0.1/x"/>',
            "is not a cid: URL",
        ),
        (b"QUJD!", "neither an xop:Include nor valid base64"),
        (b"QUJDR", "neither an xop:Include nor valid base64"),
    ],
)
def test_bad_document_content_is_a_sender_fault_without_leftovers(content, says, tmp_path):
    root = parse_xml(b'<d:Document xmlns:d="urn:ihe:iti:xds-b:2007">' + content + b"</d:Document>")
    message = IncomingMessage(root, {}, True)
    with pytest.raises(SoapFault) as caught:
        document_content(root, message, lambda: Spool(tmp_path))
    assert caught.value.code == "Sender"
    assert says in caught.value.reason
    assert list(tmp_path.glob("spool-*")) == []


# Size and speed --------------------------------------------------------------------------------


def resident_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


class PeakRss:
    """Samples this process's resident set size in a thread while the block runs."""

    def __enter__(self) -> Self:
        self.baseline = resident_kib()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, resident_kib())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_kib())

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.baseline) / 1024


@pytest.mark.parametrize("size", [1, 5, 64, 1 << 20])
def test_packed_writes_keep_every_byte_in_order_in_full_buffers_of_the_write_size(tmp_path, size):
    stored, empty = tmp_path / "stored", tmp_path / "empty"
    stored.write_bytes(os.urandom(1000))
    empty.write_bytes(b"")
    pieces = [
        b"head",
        OutgoingPart("a@x", "x/y", path=stored),
        b"",
        OutgoingPart("b@x", "x/y", chunks=iter([b"12", b"", b"345"])),
        OutgoingPart("c@x", "x/y", path=empty),
        b"tail",
    ]

    writes = [bytes(write) for write in _packed(pieces, size, first=size)]

    assert b"".join(writes) == b"head" + stored.read_bytes() + b"12345tail"
    assert all(len(write) == size for write in writes[:-1])
    assert 0 < len(writes[-1]) <= size


def test_packed_writes_start_small_and_double_up_to_the_write_size(tmp_path):
    stored = tmp_path / "stored"
    stored.write_bytes(os.urandom(5000))
    writes = [bytes(w) for w in _packed([b"x" * 100, OutgoingPart("a@x", "x/y", path=stored)],
                                        size=1024, first=128)]
    assert [len(w) for w in writes] == [128, 256, 512] + [1024] * 4 + [5100 - 4992]
    assert b"".join(writes) == b"x" * 100 + stored.read_bytes()


def test_packed_writes_are_distinct_buffers_so_a_held_write_is_never_overwritten(tmp_path):
    path = tmp_path / "stored"
    path.write_bytes(bytes(range(256)) * 8)
    writes = list(_packed([OutgoingPart("a@x", "x/y", path=path)], 256, first=256))
    assert [bytes(write) for write in writes] == [bytes(range(256))] * 8


def lazy_bytes(total: int, block: bytes) -> Iterator[bytes]:
    """``total`` bytes made on demand, never all at once."""
    for _ in range(total // len(block)):
        yield block
    yield block[: total % len(block)]


def test_300_mb_part_streams_through_writer_and_reader_in_bounded_memory(tmp_path):
    total = 300 * 1000 * 1000
    block = os.urandom(1 << 20)
    expected = hashlib.sha1()
    for piece in lazy_bytes(total, block):
        expected.update(piece)

    envelope = reply_envelope(["big@xdsi"])
    part = OutgoingPart("big@xdsi", "application/dicom", chunks=lazy_bytes(total, block))
    content_type, body = mtom_response(envelope, [part])
    with PeakRss() as rss:
        message = asyncio.run(read_message(content_type, body, lambda: Spool(tmp_path)))
    attachment = message.attachments["big@xdsi"]
    assert (attachment.size, attachment.sha1) == (total, expected.hexdigest())
    assert rss.growth_mb < 100, f"RSS grew by {rss.growth_mb:.0f} MB"
    message.discard()


def test_reader_throughput_on_a_1_gib_attachment_in_64_kib_chunks(tmp_path, capsys):
    """Measured and printed, not asserted: the figure depends on the machine's disk."""
    total, chunk = 1 << 30, os.urandom(64 << 10)
    head = (
        b"--B\r\nContent-ID: <root>\r\n\r\n"
        b'<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body><a/></e:Body></e:Envelope>'
        b"\r\n--B\r\nContent-ID: <big>\r\n\r\n"
    )

    async def body() -> AsyncIterator[bytes]:
        yield head
        for piece in lazy_bytes(total, chunk):
            yield piece
        yield b"\r\n--B--\r\n"

    started = time.perf_counter()
    message = asyncio.run(
        read_message("multipart/related; boundary=B", body(), lambda: Spool(tmp_path))
    )
    elapsed = time.perf_counter() - started
    assert message.attachments["big"].size == total
    message.discard()
    with capsys.disabled():
        print(
            f"\nMTOM reader, 1 GiB attachment in 64 KiB chunks, spooled to disk with SHA-1: "
            f"{total / elapsed / 1e6:.0f} MB/s ({elapsed:.2f} s)"
        )


def test_read_ahead_skips_a_file_it_cannot_open_and_the_stream_names_it(tmp_path):
    gone = tmp_path / "gone"
    part = OutgoingPart("b@xdsi", "application/dicom", path=gone)
    _read_ahead(part)  # no error here: the part's own turn reports it

    present = tmp_path / "present"
    present.write_bytes(b"first part")
    envelope = reply_envelope(["a@xdsi", "b@xdsi"])
    _, body = mtom_response(envelope, [OutgoingPart("a@xdsi", "x/y", path=present), part])

    async def drain() -> None:
        async for _chunk in body:
            pass

    with pytest.raises(FileNotFoundError) as error:
        asyncio.run(drain())
    assert error.value.filename == str(gone)
