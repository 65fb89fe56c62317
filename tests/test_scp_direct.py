"""C-STORE requests read and answered by the transport thread (``dicom.direct_store``): what
pynetdicom would have stored and answered, with every other message still pynetdicom's.

The sender is pynetdicom's own requestor; where a test needs PDUs pynetdicom would not send
(fragments cut and grouped at will, a broken stream), it writes them to the association's socket
itself and reads the answers through pynetdicom."""

from __future__ import annotations

import errno
import struct
import time
from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import CTImageStorage, SecondaryCaptureImageStorage, Verification

from dicom import direct_store, landing
from dicom.scp import OUT_OF_RESOURCES, PROCESSING_FAILURE, SUCCESS, DicomServer
from tests.servers import free_port
from tests.test_archive import data_set_bytes, new_archive, small_instance, stored_data_set_bytes
from tests.test_scp import AE_TITLE
from tests.test_scp_landing import assert_only_ready_files, send_with_storescu, wait_until


@pytest.fixture
def running(tmp_path, monkeypatch):
    """Our server, counting the requests that reach pynetdicom's EVT_C_STORE handler."""
    server = DicomServer(new_archive(tmp_path / "archive"), ae_title=AE_TITLE, port=free_port())
    server.through_pynetdicom = []
    own_handler = server._on_c_store

    def counted(event):
        server.through_pynetdicom.append(str(event.request.AffectedSOPInstanceUID))
        return own_handler(event)

    monkeypatch.setattr(server, "_on_c_store", counted)
    server.start()
    yield server
    server.stop()


def connect(server, *contexts: str):
    sender = AE(ae_title="SENDER")
    for abstract_syntax in contexts or (SecondaryCaptureImageStorage, Verification):
        sender.add_requested_context(abstract_syntax, "1.2.840.10008.1.2.1")
    association = sender.associate("127.0.0.1", server.port, ae_title=AE_TITLE)
    assert association.is_established
    return association


def context_id(association, abstract_syntax: str) -> int:
    return next(cx.context_id for cx in association.accepted_contexts
                if cx.abstract_syntax == abstract_syntax)


def command_bytes(primitive) -> bytes:
    message = C_STORE_RQ() if isinstance(primitive, C_STORE) else C_ECHO_RQ()
    message.primitive_to_message(primitive)
    return encode(message.command_set, True, True)


def store_request(ds: Dataset, message_id: int = 1, sop_class: str | None = None) -> C_STORE:
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = sop_class or ds.SOPClassUID
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 2
    request.DataSet = BytesIO(b"\0\0")  # only its presence matters: a data set follows
    return request


def pdv(cx: int, control: int, data: bytes) -> bytes:
    return struct.pack(">LBB", len(data) + 2, cx, control) + data


def pdu(*values: bytes) -> bytes:
    body = b"".join(values)
    return struct.pack(">BxL", 0x04, len(body)) + body


def send(association, *pdus: bytes) -> None:
    """Write PDUs to the association's socket, with its reactor paused (as pynetdicom pauses it
    to wait for an answer itself), so that the answers are left for ``answer``."""
    association._reactor_checkpoint.clear()
    while not association._is_paused:
        time.sleep(0.0001)
    for data in pdus:
        association.dul.socket.send(data)


def answer(association):
    """The next DIMSE message pynetdicom received from our server."""
    _cx, primitive = association.dimse.get_msg(block=True)
    assert primitive is not None, "no answer"
    return primitive


def instance(tmp_path, name: str = "i.dcm", rows: int = 16,
             columns: int = 4) -> tuple[Dataset, bytes]:
    """A Secondary Capture instance of ``rows`` by ``columns`` pixels, and its data set bytes."""
    path = small_instance(tmp_path / name)
    ds = dcmread(path)
    ds.Rows, ds.Columns = rows, columns
    ds.PixelData = bytes(range(251)) * (rows * columns // 251) + bytes(rows * columns % 251)
    ds.save_as(path)
    return ds, data_set_bytes(path)


def test_stores_of_storescu_never_reach_pynetdicom_and_are_archived(running, tmp_path):
    sources = send_with_storescu(running.port, tmp_path)

    assert running.through_pynetdicom == []
    for source in sources:
        sop_uid = dcmread(source, stop_before_pixels=True).SOPInstanceUID
        assert stored_data_set_bytes(running.archive, sop_uid) == data_set_bytes(source)
    assert_only_ready_files(running.archive.landing_folder)


def test_fragments_cut_and_grouped_at_will_make_the_same_instance(running, tmp_path):
    """The command in two PDUs; the data set in fragments of odd sizes, several to a PDU, the
    last sharing its PDU with a whole C-ECHO request; both answered, in order."""
    ds, data = instance(tmp_path, rows=4096)
    association = connect(running)
    store_cx = context_id(association, SecondaryCaptureImageStorage)
    echo_cx = context_id(association, Verification)
    command = command_bytes(store_request(ds, message_id=5))
    echo = C_ECHO()
    echo.MessageID, echo.AffectedSOPClassUID = 6, Verification

    pieces = [data[:1], data[1:1000], data[1000:7001], data[7001:-3], data[-3:]]
    stream = [
        pdu(pdv(store_cx, 0x01, command[:10])),
        pdu(pdv(store_cx, 0x03, command[10:]), pdv(store_cx, 0x00, pieces[0])),
        pdu(*(pdv(store_cx, 0x00, piece) for piece in pieces[1:4])),
        pdu(pdv(store_cx, 0x02, pieces[4]), pdv(echo_cx, 0x03, command_bytes(echo))),
    ]
    send(association, *stream)

    stored, echoed = answer(association), answer(association)
    assert (stored.MessageIDBeingRespondedTo, stored.Status) == (5, SUCCESS)
    assert stored.AffectedSOPInstanceUID == ds.SOPInstanceUID
    assert (echoed.MessageIDBeingRespondedTo, echoed.Status) == (6, SUCCESS)
    association.release()
    assert stored_data_set_bytes(running.archive, ds.SOPInstanceUID) == data
    assert running.through_pynetdicom == []


def test_a_store_not_taken_here_is_pynetdicoms_data_set_and_all(running, tmp_path):
    """A C-STORE request on a context of another SOP class goes to pynetdicom whole (command
    and each data set fragment), which handles it as it always did; the next store is taken
    here again."""
    ds, data = instance(tmp_path)
    other, other_data = instance(tmp_path, "other.dcm")
    association = connect(running, SecondaryCaptureImageStorage, CTImageStorage)
    store_cx = context_id(association, SecondaryCaptureImageStorage)
    ct_cx = context_id(association, CTImageStorage)

    command = command_bytes(store_request(ds, message_id=1))
    send(association, pdu(pdv(ct_cx, 0x03, command), pdv(ct_cx, 0x00, data[:100])),
         pdu(pdv(ct_cx, 0x02, data[100:])))
    first = answer(association)
    assert (first.MessageIDBeingRespondedTo, first.Status) == (1, SUCCESS)
    assert running.through_pynetdicom == [ds.SOPInstanceUID]

    command = command_bytes(store_request(other, message_id=2))
    send(association, pdu(pdv(store_cx, 0x03, command), pdv(store_cx, 0x02, other_data)))
    second = answer(association)
    assert (second.MessageIDBeingRespondedTo, second.Status) == (2, SUCCESS)
    association.release()
    assert running.through_pynetdicom == [ds.SOPInstanceUID]
    assert stored_data_set_bytes(running.archive, ds.SOPInstanceUID) == data
    assert stored_data_set_bytes(running.archive, other.SOPInstanceUID) == other_data


def test_a_command_inside_a_data_set_aborts_and_leaves_nothing(running, tmp_path):
    ds, data = instance(tmp_path, rows=4096)
    association = connect(running)
    cx = context_id(association, SecondaryCaptureImageStorage)
    command = command_bytes(store_request(ds))
    send(association, pdu(pdv(cx, 0x03, command), pdv(cx, 0x00, data[:5000])))
    send(association, pdu(pdv(cx, 0x03, command)))

    association._reactor_checkpoint.set()  # the reactor sees the abort
    wait_until(lambda: association.is_aborted, "the association was not aborted")
    folder = running.archive.landing_folder
    wait_until(lambda: not any(path.stat().st_size for path in folder.iterdir()),
               "the part landed stayed")
    assert running.archive.instance(ds.SOPInstanceUID) is None


def test_a_landing_file_the_disk_refuses_is_answered_out_of_resources(running, tmp_path,
                                                                     monkeypatch):
    """The first data set finds the disk full: 0xA700, nothing kept. The next ones, large
    enough to need PDUs of 4 MiB (the buffer grows), are stored on the same association."""
    ds, _data = instance(tmp_path, rows=4096)
    own_take = landing.ReadyFiles.take
    full = [True]

    def take_full_disk(ready):
        landing_file = own_take(ready)

        class FullDisk:
            def __init__(self, file):
                self.file = file

            def write(self, data):
                if full[0] and len(data) > 1000:  # the meta header goes, the data set not
                    raise OSError(errno.ENOSPC, "No space left on device")
                return self.file.write(data)

            def __getattr__(self, name):
                return getattr(self.file, name)

        landing_file.file = FullDisk(landing_file.file)
        return landing_file

    monkeypatch.setattr(landing.ReadyFiles, "take", take_full_disk)
    association = connect(running)
    status = association.send_c_store(dcmread(tmp_path / "i.dcm"))
    assert status.Status == OUT_OF_RESOURCES
    assert "No space left" in status.ErrorComment
    assert running.archive.instance(ds.SOPInstanceUID) is None
    assert_only_ready_files(running.archive.landing_folder)

    full[0] = False
    for name in ("big.dcm", "bigger.dcm"):
        big, big_data = instance(tmp_path, name, rows=2048, columns=4096)  # 8 MB
        assert association.send_c_store(big).Status == SUCCESS
        assert stored_data_set_bytes(running.archive, big.SOPInstanceUID) == big_data
    association.release()
    assert association.is_released


def test_a_conflicting_store_is_refused_with_its_comment_and_offending_element(running,
                                                                                tmp_path):
    ds, _data = instance(tmp_path)
    association = connect(running)
    assert association.send_c_store(ds).Status == SUCCESS
    ds.PatientName = "Other^Content"
    refused = association.send_c_store(ds)
    association.release()
    assert refused.Status == PROCESSING_FAILURE
    assert refused.OffendingElement == 0x00080018
    assert "first copy kept" in refused.ErrorComment
    assert running.through_pynetdicom == []


@pytest.mark.parametrize("status", [SUCCESS, 0xB000, PROCESSING_FAILURE, OUT_OF_RESOURCES])
@pytest.mark.parametrize("max_pdu", [0, 16384, 60])
def test_responses_decode_to_what_was_answered(status, max_pdu):
    """Each response, plain or with a comment, whole or in fragments of a small maximum
    PDU length, decodes (with pynetdicom's decoder) to the status and fields given."""
    answered = status
    if status != SUCCESS:
        answered = Dataset()
        answered.Status = status
        answered.ErrorComment = "instance not archived"
        answered.OffendingElement = [0x00080018]
    sop_class, sop_uid = SecondaryCaptureImageStorage, generate_uid()
    encoded = direct_store.c_store_response(3, 77, sop_class, sop_uid, answered, max_pdu)

    message, position = DIMSEMessage(), 0
    complete = False
    while position < len(encoded):
        length = struct.unpack_from(">L", encoded, position + 2)[0]
        received = P_DATA_TF()
        received.decode(encoded[position:position + 6 + length])
        if max_pdu:
            assert 6 + length <= max_pdu or len(received.presentation_data_value_items) == 1
        position += 6 + length
        for item in received.presentation_data_value_items:
            assert item.presentation_context_id == 3
            complete = message.decode_msg(_p_data(item))
    assert complete
    response = message.message_to_primitive()
    assert (response.MessageIDBeingRespondedTo, response.Status) == (77, status)
    assert (response.AffectedSOPClassUID, response.AffectedSOPInstanceUID) == (sop_class, sop_uid)
    if status != SUCCESS:
        assert response.ErrorComment == "instance not archived"
        assert response.OffendingElement == 0x00080018


def _p_data(item):
    from pynetdicom.pdu_primitives import P_DATA

    primitive = P_DATA()
    primitive.presentation_data_value_list.append(
        (item.presentation_context_id, item.presentation_data_value))
    return primitive


def test_commands_are_read_as_pynetdicom_writes_them():
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, "1.2.3.4.5.6"
    request = store_request(ds, message_id=65535)
    request.MoveOriginatorApplicationEntityTitle = "MOVER"
    request.MoveOriginatorMessageID = 9
    command = direct_store.read_command(command_bytes(request))
    assert (command.command_field, command.message_id) == (direct_store.C_STORE_RQ, 65535)
    assert command.data_set_type != direct_store.NO_DATA_SET
    assert (command.sop_class_uid, command.sop_instance_uid) == (CTImageStorage,
                                                                  ds.SOPInstanceUID)

    echo = C_ECHO()
    echo.MessageID = 3
    assert direct_store.read_command(command_bytes(echo)).data_set_type == \
        direct_store.NO_DATA_SET
    encoded = command_bytes(request)
    assert direct_store.read_command(encoded[:-3]) is None  # cut inside a value
    assert direct_store.read_command(encoded[:5]) is None  # cut inside a header
    assert direct_store.read_command(b"\x08\x00\x18\x00\x02\x00\x00\x001.") is None  # group 8


def test_a_malformed_p_data_pdu_aborts(running, tmp_path):
    association = connect(running)
    cx = context_id(association, SecondaryCaptureImageStorage)
    broken = bytearray(pdu(pdv(cx, 0x03, b"\0" * 20)))
    struct.pack_into(">L", broken, 6, 40)  # a PDV longer than its PDU
    send(association, bytes(broken))
    association._reactor_checkpoint.set()
    wait_until(lambda: association.is_aborted, "the association was not aborted")


def test_stores_in_pynetdicoms_own_way_give_the_same_archive(tmp_path, monkeypatch):
    """With the transport thread's path switched off, the same instance is archived to the
    same bytes: the two paths are interchangeable."""
    monkeypatch.setattr(direct_store, "install", lambda *args, **kwargs: None)
    server = DicomServer(new_archive(tmp_path / "archive"), ae_title=AE_TITLE, port=free_port())
    server.start()
    try:
        ds, data = instance(tmp_path)
        association = connect(server)
        assert association.send_c_store(ds).Status == SUCCESS
        association.release()
        assert stored_data_set_bytes(server.archive, ds.SOPInstanceUID) == data
    finally:
        server.stop()


def test_a_sender_stalled_inside_a_data_set_does_not_hold_the_server(tmp_path):
    """The transport thread reads a data set's PDUs one after the other without going back to
    pynetdicom's loop, but not while none comes: stopping the server still ends it."""
    import threading

    server = DicomServer(new_archive(tmp_path / "archive"), ae_title=AE_TITLE, port=free_port())
    server.start()
    ds, data = instance(tmp_path, rows=4096)
    association = connect(server)
    cx = context_id(association, SecondaryCaptureImageStorage)
    send(association, pdu(pdv(cx, 0x03, command_bytes(store_request(ds))),
                          pdv(cx, 0x00, data[:5000])))
    folder = server.archive.landing_folder
    wait_until(lambda: any(path.stat().st_size for path in folder.iterdir()),
               "the data set never started landing")

    stopping = threading.Thread(target=server.stop)
    stopping.start()
    stopping.join(timeout=10)
    assert not stopping.is_alive(), "the server did not stop"
    association._reactor_checkpoint.set()
    association.abort()
    assert server.archive.instance(ds.SOPInstanceUID) is None


def test_a_command_without_end_is_aborted_not_buffered(running):
    association = connect(running)
    cx = context_id(association, SecondaryCaptureImageStorage)
    fragment = pdu(pdv(cx, 0x01, b"\0" * 16384))  # command fragments, never the last
    send(association, *[fragment] * 5)
    association._reactor_checkpoint.set()
    wait_until(lambda: association.is_aborted, "the association was not aborted")


def test_a_data_set_streaming_longer_than_the_network_timeout_is_not_idle(running, tmp_path):
    ds, data = instance(tmp_path, rows=4096)
    running.ae.network_timeout = 0.5
    association = connect(running)
    cx = context_id(association, SecondaryCaptureImageStorage)
    send(association, pdu(pdv(cx, 0x03, command_bytes(store_request(ds)))))
    pieces = [data[n:n + 256] for n in range(0, len(data), 256)]
    for number, piece in enumerate(pieces):
        last = number == len(pieces) - 1
        association.dul.socket.send(pdu(pdv(cx, 0x02 if last else 0x00, piece)))
        # One PDU every 20 ms (the transport thread keeps reading them), for over a second.
        time.sleep(0.02)
    assert answer(association).Status == SUCCESS
    association._reactor_checkpoint.set()
    association.release()
    assert association.is_released
    assert stored_data_set_bytes(running.archive, ds.SOPInstanceUID) == data


@pytest.mark.parametrize("broken", ["empty value", "value shorter than its header"])
def test_a_malformed_pdu_inside_a_data_set_aborts_and_leaves_nothing(running, tmp_path,
                                                                     broken):
    ds, data = instance(tmp_path, rows=4096)
    association = connect(running)
    cx = context_id(association, SecondaryCaptureImageStorage)
    bad = (struct.pack(">LBB", 1, cx, 0x00) if broken == "empty value"
           else struct.pack(">L", 0))
    send(association, pdu(pdv(cx, 0x03, command_bytes(store_request(ds))),
                          pdv(cx, 0x00, data[:5000])), pdu(bad))
    association._reactor_checkpoint.set()
    wait_until(lambda: association.is_aborted, "the association was not aborted")
    folder = running.archive.landing_folder
    wait_until(lambda: not any(path.stat().st_size for path in folder.iterdir()),
               "the part landed stayed")
    assert running.archive.instance(ds.SOPInstanceUID) is None


def test_an_empty_p_data_pdu_inside_a_data_set_is_passed_over(running, tmp_path):
    """PS3.8 asks for one value at least; pynetdicom lets an empty PDU pass, and so do we."""
    ds, data = instance(tmp_path)
    association = connect(running)
    cx = context_id(association, SecondaryCaptureImageStorage)
    send(association, pdu(pdv(cx, 0x03, command_bytes(store_request(ds))),
                          pdv(cx, 0x00, data[:100])), pdu(), pdu(pdv(cx, 0x02, data[100:])))
    assert answer(association).Status == SUCCESS
    association.release()
    assert stored_data_set_bytes(running.archive, ds.SOPInstanceUID) == data


def test_a_store_command_without_its_data_set_type_is_not_taken(running, tmp_path):
    """(0000,0800) is required (PS3.7 9.3.1.1): without it the request is pynetdicom's to
    judge, and nothing is stored."""
    ds, data = instance(tmp_path)
    association = connect(running)
    cx = context_id(association, SecondaryCaptureImageStorage)
    command = command_bytes(store_request(ds))
    start = command.index(b"\x00\x00\x00\x08")  # (0000,0800): group, element, LE
    command = command[:start] + command[start + 10:]  # the element (8 + 2 bytes) dropped
    command = struct.pack("<HHLL", 0, 0, 4, len(command) - 12) + command[12:]
    assert direct_store.read_command(command).data_set_type is None
    send(association, pdu(pdv(cx, 0x03, command), pdv(cx, 0x02, data)))
    association._reactor_checkpoint.set()
    wait_until(lambda: not association.is_established, "the association stayed")
    assert running.archive.instance(ds.SOPInstanceUID) is None
