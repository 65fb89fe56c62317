"""The association reactor's look for a decoded request waits on the queue (briefly), so a
request is served as soon as it is decoded; a wait for a response stays pynetdicom's own."""

from __future__ import annotations

import queue
import threading
import time

from dicom import scp
from dicom.scp import REACTOR_WAIT_SECONDS, _wake_on_request


class _Dimse:
    def __init__(self):
        self.msg_queue = queue.Queue()
        self.blocking_calls = 0

    def get_msg(self, block=False):
        self.blocking_calls += block
        return self.msg_queue.get_nowait() if not self.msg_queue.empty() else (None, None)


def test_reactor_look_wakes_on_a_request_and_gives_up_after_a_short_wait(monkeypatch):
    dimse = _Dimse()
    _wake_on_request(dimse)

    start = time.perf_counter()
    assert dimse.get_msg(block=False) == (None, None)
    assert REACTOR_WAIT_SECONDS <= time.perf_counter() - start < 0.5

    # One look that starts before the request is decoded still takes it, when it comes.
    monkeypatch.setattr(scp, "REACTOR_WAIT_SECONDS", 10.0)
    timer = threading.Timer(0.1, dimse.msg_queue.put, args=((1, "C-STORE-RQ"),))
    start = time.perf_counter()
    timer.start()
    assert dimse.get_msg(block=False) == (1, "C-STORE-RQ")
    assert time.perf_counter() - start < 5
    timer.join()

    dimse.msg_queue.put((3, "N-EVENT-REPORT-RSP"))
    assert dimse.get_msg(block=True) == (3, "N-EVENT-REPORT-RSP")
    assert dimse.blocking_calls == 1  # the response wait went through pynetdicom's get_msg


def test_pdu_read_in_large_pieces_returns_what_was_asked_or_what_came_before_closing():
    import socket

    from dicom.scp import _read_in_large_pieces

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
