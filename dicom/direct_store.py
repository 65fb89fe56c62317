"""C-STORE requests stored by the transport thread that reads them.

pynetdicom works each received PDU through two threads: its transport thread reads the PDU,
decodes it into objects (each 128 KB fragment copied three times), runs its state machine and
hands the complete DIMSE message to the association's thread; that thread calls the handler,
encodes the response and hands it back for sending. For a 0.5 MB image this took some 2 ms
from the request's first fragment to its last, and four thread switches, while the sender
waited for our answer before sending the next image.

On the archive's own associations, once established (Sta6), a P-DATA-TF PDU is read here:

- its presentation data values are split out of the body where they lie (no copies);
- the command of a C-STORE request is read from its bytes (PS3.7 9.3.1.1);
- its data set fragments go straight to a landing file (``dicom.landing``), hashed as they come;
- once the last one is in, the store function (the one behind the EVT_C_STORE handler) archives
  it, and the C-STORE response goes out on the socket, all on this thread.

Inside a data set the next PDU follows at once, so it is read here too, without a round of
pynetdicom's loop; when none comes within NEXT_FRAGMENT_WAIT the thread goes back to that loop
(its timers, its stop). pynetdicom's idle timer is restarted for each PDU read here, as it does
for its own. A message broken off inside (a fragment of another message, a malformed PDU, a
command longer than MAX_COMMAND_BYTES) aborts the association, as pynetdicom does with a PDU it
cannot decode, and its landing file goes.

Everything else is pynetdicom's, untouched: other PDUs (release, abort), and every message that
is not a C-STORE request taken this way (a C-ECHO, an N-ACTION, a response to our C-STORE of a
C-GET, a C-STORE on a context where we are not the SCP): such a message's values are
handed to pynetdicom as they came, wrapped in a P-DATA-TF PDU of their own, and once any part
of a message went to pynetdicom, all of it goes. A stream this module does not understand (a
data set fragment with no command before it, an unreadable command) is left to pynetdicom for
the rest of the association.

Not taken over: TLS connections (the PDU header is read ahead with MSG_PEEK, which TLS sockets
do not offer). pynetdicom's events for received data and PDUs (EVT_DATA_RECV, EVT_PDU_RECV,
EVT_DIMSE_RECV) are not triggered for the PDUs read here; the archive's server binds none.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF

from dicom import landing, part10, tuning

log = logging.getLogger(__name__)

_PDU_HEAD = struct.Struct(">BxL")
_PDV_HEAD = struct.Struct(">LBB")  # item length, presentation context ID, message control header
_ELEMENT_HEAD = struct.Struct("<HHL")  # Implicit VR Little Endian: group, element, length
_P_DATA_TF = 0x04
_COMMAND_BIT, _LAST_BIT = 0x01, 0x02

C_STORE_RQ = 0x0001
NO_DATA_SET = 0x0101
# A command set is a few hundred bytes (PS3.7 9.3): a peer sending more is not speaking DIMSE,
# and is aborted rather than buffered without end.
MAX_COMMAND_BYTES = 1 << 16
# Inside a data set, how long to wait for its next PDU before going back to pynetdicom's loop.
NEXT_FRAGMENT_WAIT = 0.05
_UID = re.compile(r"[0-9.]{1,64}")

# Where a message's values go (see ``_Receiver``).
_IDLE, _COMMAND, _STORING, _PASSING = "idle", "command", "storing", "passing"


@dataclass
class StoreRequest:
    """A C-STORE request whose data set has landed (or failed to: ``write_error``)."""

    assoc: object
    sop_class_uid: str
    sop_instance_uid: str
    path: Path
    landed: landing.Landed | None
    write_error: OSError | None = None


# What archives a landed request; returns the C-STORE status, or a Dataset with Status and
# Error Comment (and Offending Element), as an EVT_C_STORE handler does.
StoreFunction = Callable[[StoreRequest], "int | Dataset"]


def install(assoc, ready: landing.ReadyFiles, store: StoreFunction,
            storage_classes: frozenset[str]) -> None:
    """Take over the C-STORE requests of ``assoc`` (bound to EVT_CONN_OPEN), landing their
    data sets in ``ready``'s folder. Steps aside when pynetdicom lacks what is replaced."""
    dul = getattr(assoc, "dul", None)
    transport = getattr(dul, "socket", None)
    connection = getattr(transport, "socket", None)
    needed = ("_read_pdu_data", "_decode_pdu", "event_queue", "_recv_pdu", "state_machine")
    if (dul is None or not isinstance(connection, socket.socket)
            or isinstance(connection, ssl.SSLSocket)
            or not all(hasattr(dul, name) for name in needed)):
        return
    receiver = _Receiver(assoc, dul, connection, ready, store, storage_classes)
    dul._read_pdu_data = receiver.read_pdu
    assoc.bind(evt.EVT_CONN_CLOSE, receiver.discard_unfinished)


@dataclass
class _Command:
    """What a C-STORE request's command set says (PS3.7 9.3.1.1)."""

    command_field: int | None = None
    message_id: int | None = None
    data_set_type: int | None = None
    sop_class_uid: str = ""
    sop_instance_uid: str = ""


def read_command(data: bytes | bytearray) -> _Command | None:
    """The values a C-STORE request needs from an encoded command set, None when it is not
    well formed (then pynetdicom reads it, and answers as it does)."""
    command = _Command()
    position = 0
    while position < len(data):
        if position + _ELEMENT_HEAD.size > len(data):
            return None
        group, element, length = _ELEMENT_HEAD.unpack_from(data, position)
        position += _ELEMENT_HEAD.size
        value = data[position:position + length]
        position += length
        if group != 0x0000 or len(value) != length:
            return None
        if element in (0x0100, 0x0110, 0x0800):
            if length != 2:
                return None
            number = int.from_bytes(value, "little")
            if element == 0x0100:
                command.command_field = number
            elif element == 0x0110:
                command.message_id = number
            else:
                command.data_set_type = number
        elif element in (0x0002, 0x1000):
            uid = bytes(value).rstrip(b"\0 ").decode("ascii", "replace")
            if element == 0x0002:
                command.sop_class_uid = uid
            else:
                command.sop_instance_uid = uid
    return command


class _Receiver:
    """One association's P-DATA, read and routed.

    Modes: ``_IDLE`` between messages; ``_COMMAND`` while a command's fragments arrive (kept,
    both as bytes and as the values they came in, until the command is complete); ``_STORING``
    while the data set of a C-STORE request taken here lands; ``_PASSING`` while the rest of a
    message handed to pynetdicom arrives. ``given_up``: the rest of the association is
    pynetdicom's."""

    def __init__(self, assoc, dul, connection: socket.socket, ready: landing.ReadyFiles,
                 store: StoreFunction, storage_classes: frozenset[str]):
        self.assoc, self.dul, self.connection = assoc, dul, connection
        self.ready, self.store, self.storage_classes = ready, store, storage_classes
        self.own_read_pdu = dul._read_pdu_data
        self.buffer = bytearray(1 << 16)
        self.given_up = False
        self.aborting = False
        self.mode = _IDLE
        self.context_id = 0
        self.command_bytes = bytearray()
        # The command's values, copied (the buffer is read into again), to hand over if passed.
        self.command_values: list[bytes] = []
        self.request: StoreRequest | None = None
        self.landing: landing.LandingFile | None = None
        self.message_id = 0

    # -- Reading a PDU -------------------------------------------------------------------------

    def read_pdu(self) -> None:
        """In place of pynetdicom's ``_read_pdu_data``: a P-DATA-TF PDU on an established
        association is read here, anything else by pynetdicom.

        In the middle of a data set the next PDU follows at once: it is read here too, rather
        than after a round of pynetdicom's loop (its checks, its queues, its wait) for each."""
        while self._read_p_data():
            if (self.mode != _STORING or getattr(self.dul, "_kill_thread", False)
                    or not _readable(self.connection, NEXT_FRAGMENT_WAIT)):
                return

    def _read_p_data(self) -> bool:
        """Read one PDU; True when it was a P-DATA-TF PDU read here, False when pynetdicom read
        whatever came (or the stream ended)."""
        if self.given_up or self.dul.state_machine.current_state != "Sta6":
            self.own_read_pdu()
            return False
        try:
            head = self.connection.recv(_PDU_HEAD.size, socket.MSG_PEEK | socket.MSG_WAITALL)
        except OSError:
            head = b""
        if len(head) < _PDU_HEAD.size or head[0] != _P_DATA_TF:
            self.own_read_pdu()  # closed, short, or another PDU: pynetdicom's
            return False
        _pdu_type, length = _PDU_HEAD.unpack(head)
        if length > tuning.HARD_PDU_LIMIT:
            self.own_read_pdu()  # closes the connection unread (``tuning``)
            return False

        end = _PDU_HEAD.size + length
        try:
            if not self._receive(end):
                self._drop_landing()
                self.dul.event_queue.put("Evt17")  # the connection closed inside a PDU
                return False
            # pynetdicom restarts its idle timer for each PDU it reads: so for those read here
            # (a data set streaming for longer than the network timeout is not idle).
            with contextlib.suppress(AttributeError):
                self.dul._idle_timer.restart()
            return self._take(end)
        except BaseException:
            self._drop_landing()  # pynetdicom aborts: no data set is finished after this
            raise

    def _take(self, end: int) -> bool:
        """Route the values of the PDU in the buffer (``end`` bytes long)."""
        with memoryview(self.buffer) as view:
            values = _split(view[_PDU_HEAD.size:end])
            try:
                if values is None:
                    if self.mode in (_COMMAND, _STORING):
                        self._protocol_error("a malformed P-DATA-TF PDU inside a message")
                    else:  # pynetdicom's decoder refuses it (Evt19), as it would have
                        self._give_up()
                        self._hand_over([bytes(view[:end])], whole=True)
                    return False
                passed: list = []  # values for pynetdicom, in the order they came
                for value in values:
                    self._route(value, passed)
                    if self.aborting:
                        return False  # the rest of the stream is not read
                if passed:
                    self._hand_over(passed)
                return True
            finally:
                # The buffer is read into again, and grows: nothing may hold on to it.
                for value in values or ():
                    value.release()

    def _receive(self, count: int) -> bool:
        """Read ``count`` bytes into the buffer, which grows only as bytes arrive."""
        try:
            self.buffer, received = tuning.receive_into(self.connection, self.buffer, count)
        except OSError:
            return False
        return received == count

    # -- Routing each presentation data value ------------------------------------------------

    def _route(self, value: memoryview, passed: list) -> None:
        """Send one PDV (its whole item, length included) where its message goes."""
        context_id, control = value[4], value[5]
        is_command, is_last = bool(control & _COMMAND_BIT), bool(control & _LAST_BIT)

        if self.given_up:
            passed.append(value)
        elif self.mode == _PASSING:
            passed.append(value)
            if is_command:  # a command inside the data set of the message passed
                self._give_up()
            elif is_last:
                self.mode = _IDLE
        elif self.mode == _STORING:
            if is_command or context_id != self.context_id:
                self._protocol_error("a fragment of another message inside a data set")
                return
            self._write(value[6:])
            if is_last:
                self._finish()
        elif not is_command:  # a data set fragment with no command before it
            self._give_up()
            passed.append(value)
        else:
            if self.mode == _IDLE:
                self.mode, self.context_id = _COMMAND, context_id
            if context_id != self.context_id:
                self._give_up()
            if len(self.command_bytes) + len(value) - 6 > MAX_COMMAND_BYTES:
                self._protocol_error(f"a command set over {MAX_COMMAND_BYTES} bytes")
                return
            self.command_values.append(bytes(value))
            self.command_bytes += value[6:]
            if self.given_up:
                self._pass_command(passed, data_set_follows=True)
            elif is_last:
                self._command_complete(passed)

    def _command_complete(self, passed: list) -> None:
        command = read_command(self.command_bytes)
        if command is None or command.data_set_type is None:  # malformed: pynetdicom judges
            self._pass_command(passed, data_set_follows=True)
            self._give_up()
            return
        data_set_follows = command.data_set_type != NO_DATA_SET
        context = self._storage_context(command)
        if context is None or not data_set_follows:
            self._pass_command(passed, data_set_follows)
            return
        self._start_storing(command, context)

    def _storage_context(self, command: _Command):
        """The accepted context of a C-STORE request we take, or None: it is pynetdicom's."""
        if (command.command_field != C_STORE_RQ or command.message_id is None
                or not _UID.fullmatch(command.sop_instance_uid)):
            return None
        context = getattr(self.assoc, "_accepted_cx", {}).get(self.context_id)
        if (context is None or not context.as_scp or not context.transfer_syntax
                or context.abstract_syntax != command.sop_class_uid
                or command.sop_class_uid not in self.storage_classes):
            return None
        return context

    def _pass_command(self, passed: list, data_set_follows: bool) -> None:
        passed.extend(self.command_values)
        self._clear_command()
        self.mode = _PASSING if data_set_follows else _IDLE

    def _clear_command(self) -> None:
        self.command_values = []
        self.command_bytes = bytearray()

    # -- Landing a data set --------------------------------------------------------------------

    def _start_storing(self, command: _Command, context) -> None:
        self._clear_command()
        self.mode = _STORING
        self.message_id = command.message_id
        requestor = str(getattr(self.assoc.requestor, "ae_title", "") or "").strip()
        self.request = StoreRequest(self.assoc, command.sop_class_uid, command.sop_instance_uid,
                                    Path(), None)
        try:
            self.landing = self.ready.take()
            self.request.path = Path(self.landing.name)
            self.landing.file.write(part10.file_meta_bytes(
                command.sop_class_uid, command.sop_instance_uid,
                str(context.transfer_syntax[0]), requestor))
        except OSError as exc:
            self._write_failed(exc)
            return
        self.landing.digest = landing.DataSetDigest()  # of what follows the meta header

    def _write(self, fragment: memoryview) -> None:
        if self.landing is None:  # writing failed earlier: the rest of the data set is dropped
            return
        try:
            self.landing.write(fragment)  # and hashed
        except (OSError, ValueError) as exc:  # ValueError: closed as the connection closed
            self._write_failed(exc if isinstance(exc, OSError) else OSError(str(exc)))

    def _write_failed(self, exc: OSError) -> None:
        log.error("C-STORE of %s: landing file not written: %s",
                  self.request.sop_instance_uid, exc)
        # Its number and text only: the exception's traceback holds frames, and with them views
        # of the buffer, which could then no longer grow.
        self.request.write_error = OSError(exc.errno, exc.strerror or str(exc))
        self._drop_landing()

    def _finish(self) -> None:
        """The last fragment is in: close the file, archive it, answer."""
        request, context_id = self.request, self.context_id
        if self.landing is not None:
            try:
                self.landing.close()
            except OSError as exc:
                self._write_failed(exc)
            else:
                request.landed = self.landing.digest.result()
                self.landing = None
        self.mode, self.request = _IDLE, None

        try:
            status = self.store(request)
        finally:
            if request.write_error is None:
                request.path.unlink(missing_ok=True)  # archived under its own key, or refused
        self.dul.socket.send(c_store_response(context_id, self.message_id, request.sop_class_uid,
                                              request.sop_instance_uid, status,
                                              self.assoc.dimse.maximum_pdu_size))

    def _drop_landing(self) -> None:
        landing_file, self.landing = self.landing, None
        if landing_file is not None:
            with contextlib.suppress(OSError, ValueError):
                landing_file.close()
            with contextlib.suppress(OSError):
                os.unlink(landing_file.name)

    def discard_unfinished(self, _event=None) -> None:
        """Bound to EVT_CONN_CLOSE: a data set cut short by an abort or a dropped connection
        loses its landing file at once."""
        self._drop_landing()

    # -- Leaving it to pynetdicom --------------------------------------------------------------

    def _give_up(self) -> None:
        if not self.given_up:
            log.debug("association %s: P-DATA left to pynetdicom from here on",
                      self.assoc.requestor.ae_title)
        self.given_up = True

    def _protocol_error(self, what: str) -> None:
        """A message broken off inside its data set, or a command without end: what pynetdicom
        does with a PDU it cannot decode (Evt19: A-ABORT, then the connection closes)."""
        log.warning("association from %s: %s: aborted", self.assoc.requestor.ae_title, what)
        self._drop_landing()
        self._give_up()
        self.aborting = True
        self.dul.event_queue.put("Evt19")

    def _hand_over(self, values: list, whole: bool = False) -> None:
        """What pynetdicom's ``_read_pdu_data`` does with a PDU it read: decode it, queue its
        event and the PDU for its state machine."""
        data = values[0] if whole else _pdu(values)
        try:
            pdu, event = self.dul._decode_pdu(bytearray(data))
        except Exception:  # noqa: BLE001 - pynetdicom's own answer to an undecodable PDU
            log.warning("association from %s: undecodable P-DATA-TF PDU",
                        self.assoc.requestor.ae_title)
            self.dul.event_queue.put("Evt19")
            return
        self.dul.event_queue.put(event)
        self.dul._recv_pdu.put(pdu)


def _readable(connection: socket.socket, timeout: float) -> bool:
    try:
        return bool(select.select([connection], [], [], timeout)[0])
    except (OSError, ValueError):  # closed: pynetdicom's loop finds out
        return False


def _split(body: memoryview) -> list[memoryview] | None:
    """The PDV items of a P-DATA-TF body (PS3.8 9.3.5), None when they do not fill it exactly
    or one is shorter than its header. An empty body has none (PS3.8 asks for one at least;
    pynetdicom lets it pass, and so does this)."""
    values = []
    position = 0
    while position < len(body):
        if position + _PDV_HEAD.size > len(body):
            return None
        length = _PDV_HEAD.unpack_from(body, position)[0]
        end = position + 4 + length
        if length < 2 or end > len(body):
            return None
        values.append(body[position:end])
        position = end
    return values


def _pdu(values: list) -> bytes:
    body = b"".join(values)
    return _PDU_HEAD.pack(_P_DATA_TF, len(body)) + body


def c_store_response(context_id: int, message_id: int, sop_class_uid: str,
                     sop_instance_uid: str, status: int | Dataset, max_pdu: int) -> bytes:
    """The C-STORE-RSP for ``status`` (a handler's return value), as P-DATA-TF PDU bytes."""
    response = C_STORE()
    response.MessageIDBeingRespondedTo = message_id
    response.AffectedSOPClassUID = sop_class_uid
    response.AffectedSOPInstanceUID = sop_instance_uid
    if isinstance(status, Dataset):
        response.Status = int(status.Status)
        response.ErrorComment = status.get("ErrorComment")
        if "OffendingElement" in status:
            response.OffendingElement = status.OffendingElement
    else:
        response.Status = int(status)

    command = tuning.c_store_rsp_command(response)
    if command is not None and (not max_pdu or len(command) + 6 <= max_pdu):
        return _pdu([memoryview(_PDV_HEAD.pack(len(command) + 2, context_id, 0x03) + command)])
    message = C_STORE_RSP()
    message.primitive_to_message(response)
    encoded = b""
    for primitive in message.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        encoded += pdu.encode()
    return encoded
