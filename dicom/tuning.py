"""Speed adjustments to pynetdicom 3 for the archive's AE, each one small and guarded.

pynetdicom is written for clarity, and on a store of many instances over one association some
of its choices cost more than the disk: it sleeps 1 ms between polls, reads PDUs 4 KB at a
time, rebuilds thousands of UIDs for every association, and encodes each C-STORE response
through a generic pydicom data set. Each function here changes one of those on our own
associations only, and steps aside (leaving pynetdicom's behaviour) when pynetdicom no longer
has the attribute it replaces. ``tests/test_scp_reactor.py`` checks each against pynetdicom's
own result.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import select
import socket
import ssl
import struct
import threading
import time
import weakref

from pydicom.uid import UID
from pynetdicom import dimse_primitives, evt, pdu_items, pdu_primitives, presentation
from pynetdicom import utils as pynetdicom_utils
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext

log = logging.getLogger(__name__)

_MODULES_USING_SET_UID = (pdu_items, pdu_primitives, presentation, dimse_primitives)

# pynetdicom's transport thread sleeps this long when it found nothing to do (default 1 ms);
# then, with ``_wait_for_work``, it waits on its socket for at most DUL_IDLE_WAIT.
DUL_POLL_SECONDS = 0.0
DUL_IDLE_WAIT = 0.05
# The first buffer of a PDU read (doubled as its bytes arrive).
RECV_FIRST_BYTES = 1 << 20
# Our Maximum Length Received, announced to requesters (PS3.8 D.1), and the longest PDU read:
# some senders overshoot the length announced a little, so only a PDU over the hard limit
# closes the connection unread.
MAX_PDU_LENGTH = 1 << 22
HARD_PDU_LIMIT = 4 * MAX_PDU_LENGTH
# An A-ASSOCIATE-RQ (PS3.8 9.3.2): its longest, and the transfer syntaxes one presentation
# context may propose. A storescu proposing every storage class sends some 100 KB.
ASSOCIATE_RQ_LIMIT = 1 << 20
MAX_TRANSFER_SYNTAXES = 64
UID_CACHED_LENGTH = 66  # 64 characters and up to two padding bytes
_PDU_HEAD = struct.Struct(">BxL")
_A_ASSOCIATE_RQ = 0x01
_ASSOCIATE_RQ_FIXED = 68  # protocol version, reserved, called and calling AE titles, reserved
_PRESENTATION_CONTEXT_RQ = 0x20
_TRANSFER_SYNTAX_ITEM = 0x40
# How often a thread waiting for the peer's next association PDU checks that the connection
# still stands.
RECEIVE_SLICE = 0.25
# How long the association's reactor waits for the next request before its other checks
# (release, abort, timeouts); a request arriving wakes it at once.
REACTOR_WAIT_SECONDS = 0.002


def tune_association(event) -> None:
    """Bound to EVT_CONN_OPEN. Switch off Nagle's algorithm: each small DIMSE response must
    leave at once. Then the adjustments below, for this association's transport thread (DUL),
    reactor and DIMSE provider."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _wait_for_work(event.assoc.dul)
    _give_up_when_the_connection_ends(event.assoc.dul)
    _wake_on_request(event.assoc.dimse, event.assoc.dul)
    _read_in_large_pieces(event.assoc.dul.socket)
    _answer_stores_quickly(event.assoc.dimse)


def _wait_for_work(dul) -> None:
    """pynetdicom's transport thread polls: it looks at the socket and its queues, and when it
    found nothing it sleeps 1 ms and looks again. Between two instances the link is idle, so a
    request, and then our response, each waited for the end of a sleep; and while an instance
    is stored, a thousand wake-ups a second take the GIL from the thread storing it.

    Here, when nothing is queued, the thread waits in ``select`` on the socket and on a wake-up
    socket, which ``send_pdu`` (a response, a request, a release or an abort to send) and
    ``kill_dul``/``stop_dul`` write to: it reacts at once to either side and sleeps otherwise.
    The wait is bounded by DUL_IDLE_WAIT, so its timers (ARTIM, idle) are still checked."""
    transport = getattr(dul, "socket", None)
    names = ("_is_transport_event", "send_pdu", "kill_dul", "stop_dul", "to_provider_queue",
             "event_queue", "_run_loop_delay")
    if transport is None or not all(hasattr(dul, name) for name in names):
        return
    wake_in, wake_out = socket.socketpair()
    wake_in.setblocking(False)
    wake_out.setblocking(False)
    # Closed when the connection closes (below), or at the latest when the DUL is collected.
    weakref.finalize(dul, wake_in.close)
    weakref.finalize(dul, wake_out.close)
    own = {name: getattr(dul, name) for name in ("_is_transport_event", "send_pdu", "kill_dul",
                                                  "stop_dul")}

    def wake() -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
            wake_out.send(b"\0")

    def is_transport_event() -> bool:
        connection = getattr(transport, "socket", None)
        if (connection is not None and dul.to_provider_queue.empty() and dul.event_queue.empty()
                and not _has_buffered_bytes(connection)):
            with contextlib.suppress(OSError, ValueError):  # closed: pynetdicom's look tells
                readable, _, _ = select.select([connection, wake_in], [], [], DUL_IDLE_WAIT)
                if wake_in in readable:
                    wake_in.recv(4096)
        return own["_is_transport_event"]()

    def send_pdu(primitive) -> None:
        own["send_pdu"](primitive)
        wake()

    def kill_dul() -> None:
        own["kill_dul"]()
        wake()

    def stop_dul() -> bool:
        # pynetdicom's stop_dul sets the kill flag, then waits for the thread to end; the
        # flag is set here first, so that the wake-up finds it set (not a 50 ms wait).
        if getattr(getattr(dul, "state_machine", None), "current_state", None) == "Sta1":
            dul._kill_thread = True
        wake()
        return own["stop_dul"]()

    def close_wake_up(_event) -> None:
        wake_in.close()
        wake_out.close()

    dul._is_transport_event = is_transport_event
    dul.send_pdu = send_pdu
    dul.kill_dul = kill_dul
    dul.stop_dul = stop_dul
    dul._run_loop_delay = DUL_POLL_SECONDS
    if callable(getattr(getattr(dul, "assoc", None), "bind", None)):
        dul.assoc.bind(evt.EVT_CONN_CLOSE, close_wake_up)


def _give_up_when_the_connection_ends(dul) -> None:
    """An accepted connection first waits for the peer's A-ASSOCIATE-RQ, for up to the ACSE
    timeout (30 s). When the peer closes it without sending one (a port probe, a load
    balancer's health check, a scan), pynetdicom's transport thread ends at once, but the
    association's thread still waits out the whole timeout. Here that wait is cut into short
    slices, and ends as soon as the transport thread has."""
    own_receive_pdu = getattr(dul, "receive_pdu", None)
    if own_receive_pdu is None or not hasattr(dul, "is_alive"):
        return

    def receive_pdu(wait: bool = False, timeout: float | None = None):
        if not wait or (timeout is not None and timeout <= RECEIVE_SLICE):
            return own_receive_pdu(wait=wait, timeout=timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = RECEIVE_SLICE if deadline is None else min(RECEIVE_SLICE,
                                                              deadline - time.monotonic())
            if left <= 0:
                return None
            primitive = own_receive_pdu(wait=True, timeout=left)
            if primitive is not None:
                return primitive
            if not dul.is_alive():
                return own_receive_pdu(wait=False)  # what it queued before it ended, if any

    dul.receive_pdu = receive_pdu


def _has_buffered_bytes(connection) -> bool:
    """A TLS socket may hold decrypted bytes that ``select`` does not see."""
    return isinstance(connection, ssl.SSLSocket) and bool(connection.pending())


class _SharedUidContext(PresentationContext):
    """A presentation context whose deep copy shares its UIDs.

    pynetdicom deep-copies every supported context for each association it accepts; with every
    storage class in every transfer syntax that is some 7,000 UIDs rebuilt and re-validated, about
    30 ms of CPU before the association can even be answered (a modality sending one instance
    per association felt it on each one). A UID is an immutable string: sharing it is what a
    deep copy of a plain string does. The lists are still copied, so that an association's
    negotiation never touches the server's contexts."""

    def __deepcopy__(self, memo):
        clone = object.__new__(type(self))
        clone.__dict__ = {name: list(value) if isinstance(value, list) else value
                          for name, value in self.__dict__.items()}
        return clone


def copy_contexts_cheaply(server) -> None:
    contexts = getattr(server, "contexts", None)
    for context in contexts or ():
        if type(context) is PresentationContext:
            context.__class__ = _SharedUidContext


def read_uids_once() -> None:
    """pynetdicom turns every UID of a PDU into a pydicom UID and validates it (two regular
    expressions) each time: the A-ASSOCIATE-RQ of a storescu proposing every storage class holds
    some 400, about 5 ms of CPU per association. The same few hundred UIDs come again and
    again, and a UID is an immutable string: each is made once and shared. Refusals (a
    ValueError) are not remembered, so they are raised every time, as before."""
    own = pynetdicom_utils.set_uid
    if getattr(own, "cache_info", None) is not None:
        return  # installed already

    @functools.lru_cache(maxsize=4096)
    def made_once(value, name, allow_empty, allow_none, validate):
        return own(value, name, allow_empty, allow_none, validate)

    def set_uid(value, name, allow_empty=True, allow_none=True, validate=True):
        if type(value) is UID and not hasattr(value, "_PRIVATE_TS_ENCODING"):
            value = str.__str__(value)  # its text: the UID made from it is an equal one
        # Only what validation accepts is kept (a UID has at most 64 characters, padding
        # aside): a peer's long junk would otherwise stay in memory for good.
        if type(value) in (str, bytes) and validate and len(value) <= UID_CACHED_LENGTH:
            return made_once(value, name, allow_empty, allow_none, validate)
        return own(value, name, allow_empty, allow_none, validate)

    set_uid.cache_info = made_once.cache_info
    for module in _MODULES_USING_SET_UID:
        if getattr(module, "set_uid", None) is own:
            module.set_uid = set_uid
    _add_standard_transfer_syntaxes_once()


def _add_standard_transfer_syntaxes_once() -> None:
    """``PresentationContext.add_transfer_syntax`` makes a pydicom UID of each syntax and checks
    it with regular expressions three times: for the 360 syntaxes a storescu proposes, and again
    for each context accepted, some 2 ms of each association. A standard transfer syntax (one
    of DICOM's own, which pynetdicom accepts without a word) is made once and shared; any other
    value goes through pynetdicom's own method, checks and warnings included."""
    own = getattr(PresentationContext, "add_transfer_syntax", None)
    if own is None or getattr(own, "standard_syntaxes", None) is not None:
        return
    standard: dict[str, UID] = {}

    def add_transfer_syntax(self, syntax) -> None:
        text = syntax.decode("ascii", "replace") if isinstance(syntax, bytes) else syntax
        shared = standard.get(text) if isinstance(text, str) else None
        if shared is None or not isinstance(getattr(self, "_transfer_syntax", None), list):
            own(self, syntax)
            if isinstance(text, str):  # kept only if in DICOM's dictionary: a bounded set
                uid = UID(str.__str__(text))
                if uid.is_valid and uid.is_transfer_syntax and not uid.is_private:
                    standard[str.__str__(text)] = uid
            return
        if shared not in self._transfer_syntax:
            self._transfer_syntax.append(shared)

    add_transfer_syntax.standard_syntaxes = standard
    add_transfer_syntax.pynetdicoms = own
    PresentationContext.add_transfer_syntax = add_transfer_syntax


def _read_in_large_pieces(transport) -> None:
    """pynetdicom reads a PDU from the socket 4 KB at a time, each piece appended to the last:
    some 130 calls for one 0.5 MB image. Here each call takes all the kernel holds, straight
    into the buffer. Same result: the bytes asked for, or fewer when the connection closed.

    The length asked for comes from the peer's PDU header (up to 4 GiB, before any
    association exists): above HARD_PDU_LIMIT nothing is read, and below it the buffer starts
    at RECV_FIRST_BYTES at most and doubles only as bytes really arrive, so memory follows
    what was sent, never what was announced. An A-ASSOCIATE-RQ, read before anyone is known,
    is held to the limits of ``_acceptable_association_request``."""
    if transport is None or not callable(getattr(transport, "recv", None)):
        return
    # pynetdicom reads each PDU as a 6-byte header, then its body: which one comes next.
    expected = {"body_of": None}

    def recv(nr_bytes: int) -> bytearray:
        body_of, expected["body_of"] = expected["body_of"], None
        limit = ASSOCIATE_RQ_LIMIT if body_of == _A_ASSOCIATE_RQ else HARD_PDU_LIMIT
        if nr_bytes > limit:
            # Fewer bytes than asked: pynetdicom closes the connection (Evt17).
            log.warning("a PDU of %d bytes announced, above the %d accepted: connection closed",
                        nr_bytes, limit)
            return bytearray()
        received = _receive(transport.socket, nr_bytes)
        if body_of is None and nr_bytes == _PDU_HEAD.size == len(received):
            expected["body_of"] = received[0]
        elif body_of == _A_ASSOCIATE_RQ and not _acceptable_association_request(received):
            return bytearray()
        return received

    transport.recv = recv


def _receive(connection, nr_bytes: int) -> bytearray:
    received, count = receive_into(connection, bytearray(min(nr_bytes, RECV_FIRST_BYTES)),
                                   nr_bytes)
    del received[count:]
    return received


def receive_into(connection, buffer: bytearray, nr_bytes: int) -> tuple[bytearray, int]:
    """Read ``nr_bytes`` into ``buffer`` from its start, or fewer when the connection closes:
    returns the buffer (a larger one when it had to grow) and the count read. The buffer only
    doubles as bytes really arrive, so memory follows what a peer sent, never the length it
    announced. A socket error is raised."""
    nr_read = 0
    while nr_read < nr_bytes:
        if nr_read == len(buffer):
            grown = bytearray(len(buffer) + min(nr_bytes - nr_read, max(len(buffer), 1)))
            grown[:nr_read] = buffer
            buffer = grown
        with memoryview(buffer) as view:
            count = connection.recv_into(view[nr_read:nr_bytes])
        if not count:
            break
        nr_read += count
    return buffer, nr_read


def _acceptable_association_request(body: bytearray) -> bool:
    """pynetdicom checks each proposed transfer syntax against those already seen in its
    presentation context, one by one: 20,000 of them in one context would hold a core for
    minutes, from a peer nobody knows yet (and pynetdicom logs a warning for each syntax it does
    not know). A context may propose MAX_TRANSFER_SYNTAXES (more than DICOM defines), a request
    128 contexts (PS3.8 9.3.2.2, context IDs 1 to 255, odd)."""
    position, contexts = _ASSOCIATE_RQ_FIXED, 0
    while position + 4 <= len(body):
        item_type, length = body[position], struct.unpack_from(">H", body, position + 2)[0]
        if item_type == _PRESENTATION_CONTEXT_RQ:
            contexts += 1
            syntaxes = _count_sub_items(body, position + 8, position + 4 + length,
                                        _TRANSFER_SYNTAX_ITEM)
            if syntaxes > MAX_TRANSFER_SYNTAXES or contexts > 128:
                log.warning("A-ASSOCIATE-RQ refused: %d presentation contexts, one with %d "
                            "transfer syntaxes (at most 128 and %d): connection closed",
                            contexts, syntaxes, MAX_TRANSFER_SYNTAXES)
                return False
        position += 4 + length
    return True


def _count_sub_items(body: bytearray, position: int, end: int, item_type: int) -> int:
    count = 0
    while position + 4 <= min(end, len(body)):
        if body[position] == item_type:
            count += 1
        position += 4 + struct.unpack_from(">H", body, position + 2)[0]
    return count


def _wake_on_request(dimse, dul) -> None:
    """The association's reactor sleeps 1 ms, then looks for a decoded request without
    waiting: a C-STORE decoded during that sleep waited for it, once per instance. Here its
    look waits (briefly) for something to arrive instead: a request (DIMSE queue) or a
    release or abort from the peer (the DUL's queue to the user, which the reactor checks
    after its look). Either wakes it at once. Waits for a response (``block=True``, while the
    reactor is paused) are pynetdicom's own."""
    messages = getattr(dimse, "msg_queue", None)
    indications = getattr(dul, "to_user_queue", None)
    own_get_msg = getattr(dimse, "get_msg", None)
    if messages is None or indications is None or own_get_msg is None:
        return
    arrived = threading.Event()
    for incoming in (messages, indications):
        _signal_puts(incoming, arrived)

    def get_msg(block: bool = False):
        if block:
            return own_get_msg(block=True)
        if messages.empty() and indications.empty():
            arrived.wait(REACTOR_WAIT_SECONDS)
        arrived.clear()  # whatever arrived before this is in a queue, looked at now or next
        try:
            return messages.get_nowait()
        except queue.Empty:
            return None, None

    dimse.get_msg = get_msg


def _signal_puts(incoming: queue.Queue, arrived: threading.Event) -> None:
    own_put = incoming.put

    def put(item, *args, **kwargs) -> None:
        own_put(item, *args, **kwargs)
        arrived.set()

    incoming.put = put


# C-STORE-RSP command set, Implicit VR Little Endian (PS3.7 9.3.1.2): its elements in order.
_C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101
_LAST_COMMAND_FRAGMENT = b"\x03"  # message control header: command, last fragment


def _answer_stores_quickly(dimse) -> None:
    """Encode a plain C-STORE response (Success or Warning, no Error Comment or Offending
    Element) straight to bytes, instead of through a pydicom data set: about 0.3 ms less per
    instance. Any other message goes through pynetdicom's own ``send_msg``. The one thing
    skipped is pynetdicom's EVT_DIMSE_SENT, which nothing here binds (it only logs at DEBUG)."""
    own_send_msg = getattr(dimse, "send_msg", None)
    dul = getattr(dimse, "dul", None)
    if own_send_msg is None or dul is None:
        return

    def send_msg(primitive, context_id: int) -> None:
        command = c_store_rsp_command(primitive)
        max_pdu = dimse.maximum_pdu_size
        if command is None or (max_pdu and len(command) + 6 > max_pdu):
            own_send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, _LAST_COMMAND_FRAGMENT + command))
        dul.send_pdu(pdata)

    dimse.send_msg = send_msg


def c_store_rsp_command(primitive) -> bytes | None:
    """The encoded command set of a plain C-STORE response, or None for any other message."""
    if (type(primitive) is not C_STORE or primitive.MessageIDBeingRespondedTo is None
            or primitive.Status is None or primitive.ErrorComment is not None
            or primitive.OffendingElement is not None
            or primitive.AffectedSOPClassUID is None or primitive.AffectedSOPInstanceUID is None):
        return None
    elements = b"".join((
        _element(0x0002, _uid(primitive.AffectedSOPClassUID)),
        _element(0x0100, struct.pack("<H", _C_STORE_RSP)),
        _element(0x0120, struct.pack("<H", primitive.MessageIDBeingRespondedTo)),
        _element(0x0800, struct.pack("<H", _NO_DATA_SET)),
        _element(0x0900, struct.pack("<H", primitive.Status)),
        _element(0x1000, _uid(primitive.AffectedSOPInstanceUID)),
    ))
    return _element(0x0000, struct.pack("<I", len(elements))) + elements


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _uid(value) -> bytes:
    data = str(value).encode("ascii")
    return data + b"\x00" if len(data) % 2 else data
