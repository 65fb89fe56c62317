"""dicom.tuning, each adjustment against pynetdicom's own behaviour: the association reactor's
look for a decoded request waits on the queue (briefly), so a request is served as soon as it is
decoded, while a wait for a response stays pynetdicom's own; PDUs are read in large pieces; a
plain C-STORE response is encoded byte for byte as pynetdicom encodes it."""

from __future__ import annotations

import os
import queue
import threading
import time

import pytest
from pydicom.uid import CTImageStorage, generate_uid
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE

from dicom import tuning
from dicom.tuning import REACTOR_WAIT_SECONDS, _wake_on_request


class _Dimse:
    def __init__(self):
        self.msg_queue = queue.Queue()
        self.blocking_calls = 0

    def get_msg(self, block=False):
        self.blocking_calls += block
        return self.msg_queue.get_nowait() if not self.msg_queue.empty() else (None, None)


class _Dul:
    def __init__(self):
        self.to_user_queue = queue.Queue()


def test_reactor_look_wakes_on_a_request_and_gives_up_after_a_short_wait(monkeypatch):
    dimse, dul = _Dimse(), _Dul()
    _wake_on_request(dimse, dul)

    start = time.perf_counter()
    assert dimse.get_msg(block=False) == (None, None)
    assert REACTOR_WAIT_SECONDS <= time.perf_counter() - start < 0.5

    # One look that starts before the request is decoded still takes it, when it comes.
    monkeypatch.setattr(tuning, "REACTOR_WAIT_SECONDS", 10.0)
    timer = threading.Timer(0.1, dimse.msg_queue.put, args=((1, "C-STORE-RQ"),))
    start = time.perf_counter()
    timer.start()
    assert dimse.get_msg(block=False) == (1, "C-STORE-RQ")
    assert time.perf_counter() - start < 5
    timer.join()

    # A release from the peer ends the look too (the reactor checks for it next), and while
    # it waits to be taken, no look waits.
    timer = threading.Timer(0.1, dul.to_user_queue.put, args=("A-RELEASE",))
    start = time.perf_counter()
    timer.start()
    assert dimse.get_msg(block=False) == (None, None)
    assert dimse.get_msg(block=False) == (None, None)
    assert time.perf_counter() - start < 5
    timer.join()
    assert dul.to_user_queue.get_nowait() == "A-RELEASE"

    dimse.msg_queue.put((3, "N-EVENT-REPORT-RSP"))
    assert dimse.get_msg(block=True) == (3, "N-EVENT-REPORT-RSP")
    assert dimse.blocking_calls == 1  # the response wait went through pynetdicom's get_msg


def test_pdu_read_in_large_pieces_returns_what_was_asked_or_what_came_before_closing():
    import socket

    from dicom.tuning import _read_in_large_pieces

    class _Transport:
        def __init__(self, sock):
            self.socket = sock

        def recv(self, nr_bytes):  # pynetdicom's: replaced below
            raise AssertionError("not replaced")

    ours, theirs = socket.socketpair()
    transport = _Transport(ours)
    _read_in_large_pieces(transport)
    payload = bytes(range(256)) * 2000
    sender = threading.Thread(target=theirs.sendall, args=(payload + b"rest",))
    sender.start()
    assert transport.recv(len(payload)) == bytearray(payload)
    sender.join()
    theirs.close()
    assert transport.recv(100) == bytearray(b"rest")  # the peer closed after 4 bytes
    ours.close()


def test_pdu_read_memory_follows_the_bytes_sent_not_the_length_announced():
    """A PDU header may announce up to 4 GiB before any association exists: a peer that sends
    a few bytes and stops must not make us allocate what it announced (up to the longest PDU
    accepted; above it, see the next test)."""
    import socket
    import tracemalloc

    from dicom.tuning import MAX_PDU_LENGTH, RECV_FIRST_BYTES, _read_in_large_pieces

    class _Transport:
        def __init__(self, sock):
            self.socket = sock

        def recv(self, nr_bytes):
            raise AssertionError("not replaced")

    ours, theirs = socket.socketpair()
    transport = _Transport(ours)
    _read_in_large_pieces(transport)
    payload = os.urandom(3 * RECV_FIRST_BYTES + 5)
    sender = threading.Thread(target=lambda: (theirs.sendall(payload), theirs.close()))
    tracemalloc.start()
    try:
        sender.start()
        received = transport.recv(MAX_PDU_LENGTH)  # announced 4 MiB, sent 3 MiB and closed
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        sender.join()
        ours.close()
    assert received == bytearray(payload)
    assert peak < 4 * len(payload), f"{peak / 1e6:.0f} MB for {len(payload) / 1e6:.0f} MB received"


def test_a_pdu_longer_than_accepted_closes_the_connection_unread(tmp_path):
    """A header announcing 2 GiB, before any association: the server reads none of it,
    allocates nothing for it, and closes the connection."""
    import socket
    import struct

    from dicom.scp import DicomServer
    from tests.servers import free_port
    from tests.test_archive import new_archive

    server = DicomServer(new_archive(tmp_path / "archive"), port=free_port())
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as peer:
            peer.sendall(struct.pack(">BBL", 0x01, 0, 2**31) + bytes(64 * 1024))
            # The server closes: a read ends (reset or end of stream), well before 10 s.
            try:
                assert peer.recv(1024) == b""
            except ConnectionResetError:
                pass
    finally:
        server.stop()


def _c_store_response(status: int, message_id: int = 7, **fields) -> C_STORE:
    response = C_STORE()
    response.MessageIDBeingRespondedTo = message_id
    response.AffectedSOPClassUID = CTImageStorage
    response.AffectedSOPInstanceUID = generate_uid()  # odd or even length, both are seen
    response.Status = status
    for name, value in fields.items():
        setattr(response, name, value)
    return response


def _pynetdicom_pdvs(primitive, max_pdu: int = 0) -> list[tuple[int, bytes]]:
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    return [pdv for pdata in message.encode_msg(5, max_pdu)
            for pdv in pdata.presentation_data_value_list]


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xB007])
@pytest.mark.parametrize("message_id", [1, 65535])
def test_plain_c_store_response_is_encoded_as_pynetdicom_encodes_it(status, message_id):
    for _ in range(4):  # UIDs of both parities
        primitive = _c_store_response(status, message_id)
        sent = []
        dimse = type("Dimse", (), {"maximum_pdu_size": 0})()
        dimse.dul = type("Dul", (), {"send_pdu": lambda self, pdata: sent.append(pdata)})()
        dimse.send_msg = lambda *_args: pytest.fail("went through pynetdicom's send_msg")
        tuning._answer_stores_quickly(dimse)

        dimse.send_msg(primitive, 5)

        [pdata] = sent
        assert pdata.presentation_data_value_list == _pynetdicom_pdvs(primitive)


def test_other_responses_go_through_pynetdicom():
    assert tuning.c_store_rsp_command(_c_store_response(0x0110, ErrorComment="refused")) is None
    assert tuning.c_store_rsp_command(_c_store_response(0xA900, OffendingElement=[0x00080016])) is None
    request = _c_store_response(0x0000)
    request.MessageIDBeingRespondedTo = None
    assert tuning.c_store_rsp_command(request) is None

    handed_over = []
    dimse = type("Dimse", (), {"maximum_pdu_size": 0})()
    dimse.dul = type("Dul", (), {"send_pdu": lambda self, pdata: pytest.fail("sent directly")})()
    dimse.send_msg = lambda primitive, context_id: handed_over.append(primitive)
    tuning._answer_stores_quickly(dimse)
    failure = _c_store_response(0x0110, ErrorComment="refused")
    dimse.send_msg(failure, 5)
    assert handed_over == [failure]


def test_transport_thread_waits_on_its_socket_and_is_woken_to_send(tmp_path, monkeypatch):
    """With the idle wait made very long, every step of a real exchange still happens at once:
    a request wakes the wait by arriving, a response or release by being queued, a stop by
    being asked. (Were any of them left to the wait's end, the exchange would take minutes.)"""
    from dicom.scp import DicomServer
    from tests.servers import free_port
    from tests.test_archive import new_archive, small_instance
    from tests.test_scp import AE_TITLE, dcmtk, storescu

    monkeypatch.setattr(tuning, "DUL_IDLE_WAIT", 120.0)
    server = DicomServer(new_archive(tmp_path / "archive"), ae_title=AE_TITLE, port=free_port())
    server.start()
    start = time.perf_counter()
    try:
        for _ in range(3):
            assert dcmtk("echoscu", server.port).returncode == 0
        assert storescu(server.port, small_instance(tmp_path / "a.dcm")).returncode == 0
    finally:
        server.stop()
    assert time.perf_counter() - start < 60


def test_a_connection_closed_before_any_association_request_frees_its_thread(tmp_path):
    """A port probe or a health check connects and closes: its association thread ends within
    a second or so, not after the 30 s ACSE timeout."""
    import socket

    from dicom.scp import DicomServer
    from tests.servers import free_port
    from tests.test_archive import new_archive
    from tests.test_scp import AE_TITLE, dcmtk

    def waiting_threads() -> int:
        return sum(thread.name.startswith("AcceptorThread") for thread in threading.enumerate())

    server = DicomServer(new_archive(tmp_path / "archive"), ae_title=AE_TITLE, port=free_port())
    server.start()
    try:
        before = waiting_threads()
        for _ in range(5):
            socket.create_connection(("127.0.0.1", server.port)).close()
        deadline = time.monotonic() + 10
        while waiting_threads() > before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert waiting_threads() == before
        assert time.monotonic() < deadline - 5  # gone well before any 30 s timeout
        assert dcmtk("echoscu", server.port).returncode == 0  # and the server still answers
    finally:
        server.stop()


def test_uids_read_once_are_the_uids_pynetdicom_makes():
    """The shared UIDs equal pynetdicom's own; a refused value is refused every time."""
    from pydicom.uid import UID
    from pynetdicom import pdu_items, utils

    from dicom.tuning import read_uids_once

    read_uids_once()
    cached = pdu_items.set_uid
    assert cached is not utils.set_uid and cached.cache_info is not None
    for value in (b"1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1", UID("1.2.840.10008.1.2.1")):
        made = cached(value, "Transfer Syntax Name")
        assert made == utils.set_uid(value, "Transfer Syntax Name") and type(made) is UID
    hits = cached.cache_info().hits
    cached(b"1.2.840.10008.1.2.1", "Transfer Syntax Name")
    assert cached.cache_info().hits == hits + 1
    for _ in range(2):
        with pytest.raises(ValueError):
            cached("1" * 65, "Abstract Syntax Name", allow_empty=False)
    assert cached(None, "Abstract Syntax Name") is None
    # What validation does not accept is never kept: a peer cannot fill memory with it.
    size = cached.cache_info().currsize
    junk = b"1." + b"2" * 65000
    assert cached(junk, "Transfer Syntax Name", validate=False) == junk.decode()
    assert cached(b"1.2.3", "Transfer Syntax Name", validate=False) == "1.2.3"
    assert cached.cache_info().currsize == size
    read_uids_once()  # a second call leaves the first in place
    assert pdu_items.set_uid is cached


def test_standard_transfer_syntaxes_are_added_as_pynetdicom_adds_them():
    """Shared standard syntaxes give the list pynetdicom's own method gives, duplicates and
    all; anything else (private, unknown, not a UID) still gets pynetdicom's checks."""
    from pydicom.uid import UID
    from pynetdicom.presentation import PresentationContext

    from dicom.tuning import read_uids_once

    read_uids_once()
    quick = PresentationContext.add_transfer_syntax
    own = quick.pynetdicoms
    try:
        proposals = ["1.2.840.10008.1.2.1", b"1.2.840.10008.1.2", UID("1.2.840.10008.1.2.4.70"),
                     "1.2.840.10008.1.2.1", "1.2.3.4.5", "1.2.840.10008.1.2.1.99", None]
        lists = []
        for method in (own, quick, quick):  # the second round takes the shared syntaxes
            context = PresentationContext()
            for proposal in proposals:
                method(context, proposal)
            lists.append(context.transfer_syntax)
        assert lists[0] == lists[1] == lists[2]
        assert "1.2.840.10008.1.2.1" in quick.standard_syntaxes
        assert "1.2.3.4.5" not in quick.standard_syntaxes  # not DICOM's: checked each time
        with pytest.raises(ValueError):
            quick(PresentationContext(), "1" * 65)  # longer than a UID may be
    finally:
        read_uids_once()  # installed once: a second call changes nothing
        assert PresentationContext.add_transfer_syntax is quick


def _associate_rq(contexts: int, syntaxes: int, called: bytes = b"XDSI") -> bytes:
    """An A-ASSOCIATE-RQ (PS3.8 9.3.2) proposing CT Image Storage ``contexts`` times, each
    with ``syntaxes`` transfer syntaxes."""
    import struct

    def item(item_type: int, body: bytes) -> bytes:
        return struct.pack(">BxH", item_type, len(body)) + body

    proposed = b""
    for number in range(contexts):
        body = struct.pack(">BBBB", (2 * number + 1) % 256, 0, 0, 0)  # IDs are odd, 1 to 255
        body += item(0x30, b"1.2.840.10008.5.1.4.1.1.2")
        body += b"".join(item(0x40, b"1.2.840.10008.1.2.1" if n == 0 else f"1.2.3.{n}".encode())
                         for n in range(syntaxes))
        proposed += item(0x20, body)
    user = item(0x50, item(0x51, struct.pack(">L", 16384)) + item(0x52, b"1.2.3.4"))
    fields = (struct.pack(">HH", 1, 0) + called.ljust(16) + b"PEER".ljust(16) + bytes(32)
              + item(0x10, b"1.2.840.10008.3.1.1.1") + proposed + user)
    return struct.pack(">BxL", 1, len(fields)) + fields


def _first_answer(port: int, pdu: bytes) -> bytes:
    """The first byte the server answers (the PDU type), or b"" when it closes."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as peer:
        peer.sendall(pdu)
        try:
            return peer.recv(1)
        except ConnectionResetError:
            return b""


@pytest.mark.parametrize("contexts, syntaxes, answer", [
    (128, 40, b"\x02"),     # every storage class, 40 syntaxes each: A-ASSOCIATE-AC
    (2, 3000, b""),         # 3,000 syntaxes in one context: closed unread
    (129, 1, b""),          # more contexts than context IDs exist
])
def test_association_requests_are_held_to_what_the_standard_allows(tmp_path, contexts, syntaxes,
                                                                   answer):
    from dicom.scp import DicomServer
    from tests.servers import free_port
    from tests.test_archive import new_archive

    server = DicomServer(new_archive(tmp_path / "archive"), port=free_port())
    server.start()
    try:
        started = time.monotonic()
        assert _first_answer(server.port, _associate_rq(contexts, syntaxes)) == answer
        assert time.monotonic() - started < 5
    finally:
        server.stop()
