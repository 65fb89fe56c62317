"""Received data sets are written once: straight into the archive's landing folder, behind our
File Meta, then renamed into place; other AEs in the process keep pynetdicom's behaviour."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE, _config, dimse_messages, evt
from pynetdicom.sop_class import SecondaryCaptureImageStorage

from dicom import landing, part10
from tests.servers import free_port
from tests.test_archive import data_set_bytes, new_archive, small_instance, split_part10
from tests.test_scp import AE_TITLE, storescu


@pytest.fixture
def running(tmp_path, monkeypatch):
    from dicom.scp import DicomServer

    archive = new_archive(tmp_path / "archive")

    def no_copy(*_args, **_kwargs):
        raise AssertionError("a received data set was copied")

    monkeypatch.setattr(archive, "_spool", no_copy)
    server = DicomServer(archive, ae_title=AE_TITLE, port=free_port())
    server.start()
    yield server
    server.stop()


def send_with_storescu(port: int, tmp_path: Path, count: int = 3) -> list[Path]:
    """``count`` small instances sent by dcmtk's storescu on one association; their files."""
    folder = tmp_path / "send"
    folder.mkdir()
    sources = [small_instance(folder / f"{n}.dcm", rows=4 + n) for n in range(count)]
    result = storescu(port, folder)
    assert result.returncode == 0, result.stderr
    return sources


def test_storescu_instances_are_archived_without_a_copy(running, tmp_path):
    sources = send_with_storescu(running.port, tmp_path)

    archive = running.archive
    for source in sources:
        sop_uid = dcmread(source, stop_before_pixels=True).SOPInstanceUID
        with archive.open_instance(sop_uid) as f:
            meta, data_set = split_part10(f.read())
        assert data_set == data_set_bytes(source)
        assert meta.ImplementationClassUID == part10.IMPLEMENTATION_CLASS_UID
        assert meta.SourceApplicationEntityTitle == "SENDER"
        assert meta.MediaStorageSOPInstanceUID == sop_uid
    assert_only_ready_files(archive.landing_folder)


def assert_only_ready_files(folder: Path) -> None:
    """Nothing received is left behind: the folder holds only the empty files kept ready."""
    files = list(folder.iterdir())
    assert len(files) <= landing.READY_FILES
    assert [path.name for path in files if path.stat().st_size] == []


def wait_until(condition, failure: str, timeout: float = 10, step: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(step)


def test_ready_files_go_when_the_server_stops_and_a_removed_one_is_replaced(tmp_path):
    from dicom.scp import DicomServer

    archive = new_archive(tmp_path / "archive")
    server = DicomServer(archive, ae_title=AE_TITLE, port=free_port())
    server.start()
    try:
        deadline = time.monotonic() + 10
        while len(list(archive.landing_folder.iterdir())) < landing.READY_FILES:
            assert time.monotonic() < deadline, "no landing file was made ready"
            time.sleep(0.01)
        # A clean-up of the tmp folder (or anyone) removes the ready files: storing still works.
        for path in archive.landing_folder.iterdir():
            path.unlink()
        source = small_instance(tmp_path / "a.dcm")
        assert storescu(server.port, source).returncode == 0
        assert archive.instance(dcmread(source, stop_before_pixels=True).SOPInstanceUID)
    finally:
        server.stop()
    assert list(archive.landing_folder.iterdir()) == []


def test_another_ae_in_the_process_keeps_pynetdicom_files(running, tmp_path):
    """Only our AE's associations land in the archive; a plain pynetdicom SCP next to it still
    gets its data sets in the system temp folder, with pynetdicom's meta header."""
    seen = []

    def on_store(event):
        path = Path(event.dataset_path)
        with open(path, "rb") as f:
            meta, _ = split_part10(f.read())
        seen.append((path.parent, meta.ImplementationClassUID))
        return 0x0000

    other = AE(ae_title="OTHER")
    other.add_supported_context(SecondaryCaptureImageStorage)
    port = free_port()
    other_server = other.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        assert _config.STORE_RECV_CHUNKED_DATASET  # while our server runs
        sender = AE(ae_title="SENDER")
        sender.add_requested_context(SecondaryCaptureImageStorage)
        assoc = sender.associate("127.0.0.1", port, ae_title="OTHER")
        assert assoc.is_established
        status = assoc.send_c_store(dcmread(small_instance(tmp_path / "a.dcm")))
        assoc.release()
    finally:
        other_server.shutdown()

    assert status.Status == 0x0000
    [(folder, implementation)] = seen
    assert folder == Path(tempfile.gettempdir())
    assert implementation != part10.IMPLEMENTATION_CLASS_UID
    assert_only_ready_files(running.archive.landing_folder)


def test_pynetdicom_names_are_restored_when_the_last_server_stops(tmp_path):
    from dicom.scp import DicomServer

    servers = [DicomServer(new_archive(tmp_path / f"a{n}"), port=free_port()) for n in range(2)]
    for server in servers:
        server.start()
    assert dimse_messages.NamedTemporaryFile is not tempfile.NamedTemporaryFile
    servers[0].stop()
    assert dimse_messages.write_file_meta_info is not write_file_meta_info  # one still runs
    servers[1].stop()
    assert dimse_messages.NamedTemporaryFile is tempfile.NamedTemporaryFile
    assert dimse_messages.write_file_meta_info is write_file_meta_info


def test_landing_files_left_by_an_earlier_run_are_swept_when_the_server_starts(tmp_path):
    from dicom.scp import DicomServer

    archive = new_archive(tmp_path / "archive")
    old = archive.landing_folder / "c-store-1-7.dcm"
    recent = archive.landing_folder / "c-store-2-9.dcm"
    unrelated = archive.landing_folder / "spool-abc.tmp"
    for path in (old, recent, unrelated):
        path.write_bytes(b"part of an instance")
    two_hours_ago = time.time() - 7200
    for path in (old, unrelated):
        os.utime(path, (two_hours_ago, two_hours_ago))

    server = DicomServer(archive, ae_title=AE_TITLE, port=free_port())
    server.start()
    server.stop()

    assert not old.exists()
    assert recent.exists() and unrelated.exists()  # maybe still being written; not a landing file


def test_a_server_that_cannot_listen_leaves_nothing_running(tmp_path):
    import socket

    from dicom.scp import DicomServer

    archive = new_archive(tmp_path / "archive")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = DicomServer(archive, ae_title=AE_TITLE, port=taken.getsockname()[1])
        with pytest.raises(OSError):
            server.start()
    assert dimse_messages.NamedTemporaryFile is tempfile.NamedTemporaryFile
    assert not _config.STORE_RECV_CHUNKED_DATASET
    assert list(archive.landing_folder.iterdir()) == []


def test_each_landed_data_set_comes_with_its_digest(running, tmp_path, monkeypatch):
    """The SCP hands the archive the hash it computed while the data set landed, and that hash
    is the one of the data set bytes stored."""
    archive = running.archive
    digests = []
    receive = archive.receive

    def spy(path, **kwargs):
        digests.append(kwargs.get("landed"))
        return receive(path, **kwargs)

    monkeypatch.setattr(archive, "receive", spy)
    folder = tmp_path / "send"
    folder.mkdir()
    sources = [small_instance(folder / "small.dcm")]
    # And one over many PDUs (at most 16 KB each), longer than the head kept.
    large = dcmread(small_instance(folder / "large.dcm"))
    large.Rows = large.Columns = 512
    large.PixelData = os.urandom(512 * 512)
    large.save_as(folder / "large.dcm")
    sources.append(folder / "large.dcm")
    assert storescu(running.port, folder, options=("--max-send-pdu", "16384")).returncode == 0

    assert len(digests) == 2 and None not in digests
    expected = {hashlib.sha1(data_set_bytes(source)).hexdigest() for source in sources}
    assert {digest.sha1 for digest in digests} == expected
    stored = {archive.instance(dcmread(source, stop_before_pixels=True).SOPInstanceUID).sha1
              for source in sources}
    assert stored == expected
    assert {len(digest.head) for digest in digests} == \
        {len(data_set_bytes(sources[0])), landing.HEAD_BYTES}


def test_idle_ready_files_are_made_anew_so_that_no_sweep_takes_them(tmp_path, monkeypatch):
    monkeypatch.setattr(landing, "SWEEP_INTERVAL_SECONDS", 0.2)
    folder = tmp_path / "landing"
    folder.mkdir()
    ready = landing.ReadyFiles(folder)
    try:
        def names() -> set[str]:
            return {path.name for path in folder.iterdir()}

        wait_until(lambda: len(names()) == landing.READY_FILES, "no landing file was made ready")
        first = names()
        wait_until(lambda: not first & names(), "the idle ready files were kept")
        wait_until(lambda: len(names()) == landing.READY_FILES,
                   "no new landing file was made ready")
        taken = ready.take()
        assert taken.is_linked()
        taken.close()
    finally:
        ready.close()


def test_a_data_set_cut_short_by_an_abort_leaves_no_landing_file(running, tmp_path):
    """The sender aborts halfway through a data set: its landing file goes with the
    connection (not an hour later), and nothing is indexed."""
    from io import BytesIO

    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE

    archive = running.archive
    ds = dcmread(small_instance(tmp_path / "s.dcm"))
    ds.Rows = 4096
    ds.PixelData = bytes(4096 * 4)
    sender = AE(ae_title="SENDER")
    sender.add_requested_context(SecondaryCaptureImageStorage, ds.file_meta.TransferSyntaxUID)
    association = sender.associate("127.0.0.1", running.port, ae_title=AE_TITLE)
    assert association.is_established
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = ds.SOPClassUID
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 2
    del ds.file_meta
    encoded = BytesIO()
    ds.save_as(encoded, implicit_vr=False, little_endian=True)
    request.DataSet = BytesIO(encoded.getvalue())
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    fragments = list(message.encode_msg(association.accepted_contexts[0].context_id, 4096))
    for fragment in fragments[:len(fragments) // 2]:
        association.dul.send_pdu(fragment)

    def landing_bytes() -> int:
        return sum(path.stat().st_size for path in archive.landing_folder.iterdir())

    wait_until(landing_bytes, "the data set never started landing")
    association.abort()
    wait_until(lambda: not landing_bytes(), "the part landed stayed")
    assert archive.instance(str(request.AffectedSOPInstanceUID)) is None


def test_a_busy_folder_is_swept_too(tmp_path, monkeypatch):
    """Files are taken all the time (never idle): leftovers still go, the ready files stay."""
    monkeypatch.setattr(landing, "SWEEP_INTERVAL_SECONDS", 0.3)
    folder = tmp_path / "landing"
    folder.mkdir()
    leftover = folder / "c-store-1-1-abc.dcm"
    leftover.write_bytes(b"part of an instance")
    two_hours_ago = time.time() - 7200
    os.utime(leftover, (two_hours_ago, two_hours_ago))
    ready = landing.ReadyFiles(folder)
    try:
        def busy_until_swept() -> bool:
            taken = ready.take()  # busy: a file every 50 ms
            taken.close()
            Path(taken.name).unlink()
            return not leftover.exists()

        wait_until(busy_until_swept, "the leftover was never swept", step=0.05)
        taken = ready.take()
        assert taken.is_linked()
        taken.close()
    finally:
        ready.close()


def test_no_log_line_per_instance_while_the_server_runs(running, tmp_path, caplog):
    """pynetdicom's own event logging (a line per instance at INFO) is off while our server
    runs; our line per association says what was stored. It is back once the server stops."""
    import logging

    folder = tmp_path / "send"
    folder.mkdir()
    for number in range(3):
        small_instance(folder / f"{number}.dcm")
    with caplog.at_level(logging.INFO):
        assert storescu(running.port, folder).returncode == 0
        wait_until(lambda: "3 stored" in caplog.text, "no line for the association")
    assert "Received Store Request" not in caplog.text
    assert _config.LOG_HANDLER_LEVEL == "none"
    running.stop()
    assert _config.LOG_HANDLER_LEVEL == "standard"
