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
