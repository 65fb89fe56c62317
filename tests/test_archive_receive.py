"""The archive's fast paths for received instances: the File Meta read by hand, the index
values parsed from the first chunk, and a landed file archived in place (``adopt=True``)."""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import os
import struct
import threading
import time

import pytest
from pydicom import dcmread

from dicom import archive as archive_module
from dicom import part10
from dicom.facts import facts_from_head, read_facts
from tests.test_archive import (
    DEPT,
    data_set_bytes,
    dept_images,
    new_archive,
    small_instance,
    split_part10,
    stored_data_set_bytes,
)


@pytest.fixture
def archive(tmp_path):
    return new_archive(tmp_path / "archive")


def _sources(tmp_path):
    files = [small_instance(tmp_path / "small.dcm", charset="ISO_IR 192",
                            patient_name="Wang^XiaoDong=王^小東")]
    for number in sorted(DEPT):
        folder = dept_images(number)
        if folder.is_dir():
            files.extend(sorted(folder.iterdir())[:3])
    return files


def test_meta_read_by_hand_matches_pydicom(tmp_path):
    for path in _sources(tmp_path):
        source = part10.read_source(path, is_part10=True, transfer_syntax_uid=None)
        meta, data_set = split_part10(path.read_bytes())
        assert source.offset == path.stat().st_size - len(data_set)
        assert (source.transfer_syntax_uid, source.sop_class_uid, source.sop_instance_uid,
                source.implementation_class_uid) == (
            meta.TransferSyntaxUID, meta.MediaStorageSOPClassUID,
            meta.MediaStorageSOPInstanceUID, meta.ImplementationClassUID)


def test_meta_in_implicit_vr_still_read_through_pydicom(tmp_path):
    """An old writer's Implicit VR meta group is not the plain form: pydicom reads it."""
    source = small_instance(tmp_path / "a.dcm")
    header = dcmread(source, stop_before_pixels=True)

    def implicit(element: int, value: bytes) -> bytes:
        return struct.pack("<HHI", 0x0002, element, len(value)) + value

    uid = part10._uid_bytes
    meta = (implicit(0x0002, uid(header.SOPClassUID))
            + implicit(0x0003, uid(header.SOPInstanceUID))
            + implicit(0x0010, uid("1.2.840.10008.1.2.1")))
    old = tmp_path / "old.dcm"
    old.write_bytes(part10.PREAMBLE + meta + data_set_bytes(source))
    read = part10.read_source(old, is_part10=True, transfer_syntax_uid=None)
    assert (read.offset, read.sop_instance_uid, read.transfer_syntax_uid) == (
        len(part10.PREAMBLE) + len(meta), header.SOPInstanceUID, "1.2.840.10008.1.2.1")


def test_facts_from_the_first_bytes_equal_those_of_the_whole_file(tmp_path):
    for path in _sources(tmp_path):
        source = part10.read_source(path, is_part10=True, transfer_syntax_uid=None)
        data_set = data_set_bytes(path)
        assert facts_from_head(data_set, source.transfer_syntax_uid, whole=True) == \
            read_facts(path)
        # A head that stops inside the elements wanted gives no answer rather than a wrong one.
        assert facts_from_head(data_set[:40], source.transfer_syntax_uid, whole=False) is None


def _landed(archive, source, name="c-store-test.dcm"):
    """``source`` as the SCP lands it: in the landing folder, behind our File Meta."""
    header = dcmread(source, stop_before_pixels=True)
    path = archive.landing_folder / name
    path.write_bytes(part10.file_meta_bytes(header.SOPClassUID, header.SOPInstanceUID,
                                            "1.2.840.10008.1.2.1", "SENDER")
                     + data_set_bytes(source))
    return path, header


def test_landed_file_with_our_meta_is_archived_as_it_is(archive, tmp_path):
    source = small_instance(tmp_path / "a.dcm")
    landed, header = _landed(archive, source)
    inode = landed.stat().st_ino

    receipt = archive.receive(landed, adopt=True, source_ae_title="SENDER")
    assert receipt.outcome.value == "stored"
    record = archive.instance(header.SOPInstanceUID)
    assert archive.blobstore.path(record.blob_key).stat().st_ino == inode  # moved, not copied
    assert stored_data_set_bytes(archive, header.SOPInstanceUID) == data_set_bytes(source)
    assert record.size == archive.blobstore.size(record.blob_key)
    with archive.open_instance(header.SOPInstanceUID) as f:
        meta, _ = split_part10(f.read())
    assert meta.SourceApplicationEntityTitle == "SENDER"
    assert list(archive.landing_folder.iterdir()) == []

    # The same instance landing again is a duplicate: the stored file stays, the new one goes.
    again, _ = _landed(archive, source, "c-store-again.dcm")
    assert archive.receive(again, adopt=True).outcome.value == "duplicate"
    assert archive.blobstore.path(record.blob_key).stat().st_ino == inode
    assert list(archive.landing_folder.iterdir()) == []


def test_landed_file_with_another_meta_is_copied_behind_ours_and_removed(archive, tmp_path):
    source = small_instance(tmp_path / "a.dcm")
    landed = archive.landing_folder / "foreign.dcm"
    landed.write_bytes(source.read_bytes())  # pydicom's File Meta, not ours

    assert archive.receive(landed, adopt=True, source_ae_title="SENDER").outcome.value == \
        "stored"
    sop_uid = dcmread(source, stop_before_pixels=True).SOPInstanceUID
    with archive.open_instance(sop_uid) as f:
        meta, data_set = split_part10(f.read())
    assert meta.ImplementationClassUID == part10.IMPLEMENTATION_CLASS_UID
    assert data_set == data_set_bytes(source)
    assert list(archive.landing_folder.iterdir()) == []


def test_landed_file_that_is_not_archivable_is_removed(archive, tmp_path):
    garbage = archive.landing_folder / "garbage.dcm"
    garbage.write_bytes(b"not DICOM at all" * 20)
    assert archive.receive(garbage, adopt=True).outcome.value == "invalid"

    source = small_instance(tmp_path / "a.dcm")
    ds = dcmread(source)
    ds.StudyInstanceUID = "not a uid"
    ds.save_as(source)
    landed, _ = _landed(archive, source)
    assert archive.receive(landed, adopt=True).outcome.value == "invalid"

    assert archive.studies() == []
    assert list(archive.landing_folder.iterdir()) == []


def test_landed_file_is_indexed_only_once_its_fsync_returned(archive, tmp_path, monkeypatch):
    """The fsync runs beside the hashing and indexing; the commit waits for it. A disk error
    there refuses the instance: no row, no file in place, nothing left in the landing folder."""
    source = small_instance(tmp_path / "a.dcm")
    landed, header = _landed(archive, source)

    def failing_disk(fd, _hashed):
        os.close(fd)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(archive_module, "_flush_and_close", failing_disk)
    with pytest.raises(OSError):
        archive.receive(landed, adopt=True)
    assert archive.studies() == []
    assert [p for p in archive.blobstore.root.joinpath("blobs").rglob("*") if p.is_file()] == []
    assert list(archive.landing_folder.iterdir()) == []

    # The commit waited for that fsync: while it is held back, no row appears.
    monkeypatch.undo()
    released, started = threading.Event(), threading.Event()
    own_flush = archive_module._flush_and_close

    def slow_disk(fd, hashed):
        started.set()
        released.wait(10)
        own_flush(fd, hashed)

    monkeypatch.setattr(archive_module, "_flush_and_close", slow_disk)
    landed, _ = _landed(archive, source)
    storing = concurrent.futures.ThreadPoolExecutor(1).submit(archive.receive, landed, adopt=True)
    assert started.wait(10)
    time.sleep(0.2)
    assert not storing.done() and archive.studies() == []
    released.set()
    assert storing.result(10).outcome.value == "stored"
    assert archive.instance(header.SOPInstanceUID).size > 0


def test_a_duplicate_does_not_wait_for_its_landed_copy_to_reach_the_disk(archive, tmp_path,
                                                                         monkeypatch):
    source = small_instance(tmp_path / "a.dcm")
    landed, _ = _landed(archive, source)
    assert archive.receive(landed, adopt=True).outcome.value == "stored"

    released = threading.Event()
    own_flush = archive_module._flush_and_close

    def held_disk(fd, hashed):
        released.wait(10)
        own_flush(fd, hashed)

    monkeypatch.setattr(archive_module, "_flush_and_close", held_disk)
    again, _ = _landed(archive, source, "c-store-again.dcm")
    try:
        assert archive.receive(again, adopt=True).outcome.value == "duplicate"
    finally:
        released.set()
    assert list(archive.landing_folder.iterdir()) == []


def _blob_files(archive) -> list:
    return sorted(path for path in (archive.blobstore.root / "blobs").rglob("*.dcm"))


def test_the_same_instance_from_two_senders_at_once_keeps_one_whole_copy(
        archive, tmp_path, monkeypatch):
    """Two stores of one instance at once (their files differ in the meta header naming the
    sender): one is stored, the other is a duplicate, and the row names a file of exactly its
    size and bytes, never the other store's file."""
    source = small_instance(tmp_path / "a.dcm")
    first, header = _landed(archive, source, "c-store-first.dcm")
    second = archive.landing_folder / "c-store-second.dcm"
    second.write_bytes(part10.file_meta_bytes(header.SOPClassUID, header.SOPInstanceUID,
                                              "1.2.840.10008.1.2.1", "A_LONGER_AE_TITLE")
                       + data_set_bytes(source))

    released, started = threading.Event(), threading.Event()
    own_flush = archive_module._flush_and_close
    first_inode = first.stat().st_ino

    def slow_for_the_first(fd, hashed):
        if os.fstat(fd).st_ino == first_inode:
            started.set()
            released.wait(10)
        own_flush(fd, hashed)

    monkeypatch.setattr(archive_module, "_flush_and_close", slow_for_the_first)
    pool = concurrent.futures.ThreadPoolExecutor(2)
    storing_first = pool.submit(archive.receive, first, adopt=True, source_ae_title="SENDER")
    assert started.wait(10)
    storing_second = pool.submit(archive.receive, second, adopt=True)
    time.sleep(0.3)  # the second is placed too, or waits for the first's transaction
    released.set()
    outcomes = {storing_first.result(10).outcome.value, storing_second.result(10).outcome.value}
    assert outcomes == {"stored", "duplicate"}

    record = archive.instance(header.SOPInstanceUID)
    stored = archive.blobstore.path(record.blob_key)
    assert stored.stat().st_size == record.size
    meta, data_set = split_part10(stored.read_bytes())
    assert data_set == data_set_bytes(source)
    assert _blob_files(archive) == [stored]  # the other copy is gone
    assert list(archive.landing_folder.iterdir()) == []


def test_a_failed_fsync_leaves_neither_file_nor_row(archive, tmp_path, monkeypatch):
    def failing_disk(fd, hashed):
        os.close(fd)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(archive_module, "_flush_and_close", failing_disk)
    source = small_instance(tmp_path / "a.dcm")
    landed, header = _landed(archive, source)
    with pytest.raises(OSError):
        archive.receive(landed, adopt=True)
    assert archive.instance(header.SOPInstanceUID) is None
    assert _blob_files(archive) == []
    assert list(archive.landing_folder.iterdir()) == []


def test_a_database_error_after_placing_leaves_no_file(archive, tmp_path, monkeypatch):
    from sqlalchemy.exc import OperationalError

    def failing_index(*_args):
        raise OperationalError("INSERT", {}, Exception("attempt to write a readonly database"))

    monkeypatch.setattr(archive, "_index", failing_index)
    source = small_instance(tmp_path / "a.dcm")
    landed, header = _landed(archive, source)
    with pytest.raises(OperationalError):
        archive.receive(landed, adopt=True)
    assert _blob_files(archive) == []


def test_a_file_a_row_names_is_never_removed_after_a_failure(archive, tmp_path):
    """A commit whose answer was lost: the row exists, so its file stays."""
    source = small_instance(tmp_path / "a.dcm")
    landed, header = _landed(archive, source)
    assert archive.receive(landed, adopt=True).outcome.value == "stored"
    record = archive.instance(header.SOPInstanceUID)

    archive._unplace(header.SOPInstanceUID, record.blob_key)
    assert archive.blobstore.path(record.blob_key).exists()
    stray = record.blob_key.replace(".dcm", ".stray.dcm")
    archive.blobstore.path(stray).write_bytes(b"a copy no row names")
    archive._unplace(header.SOPInstanceUID, stray)
    assert not archive.blobstore.path(stray).exists()


def test_a_landed_digest_spares_reading_the_file_again(archive, tmp_path, monkeypatch):
    """What the SCP hashed as the data set landed is what the archive records."""
    from dicom.landing import DataSetDigest

    source = small_instance(tmp_path / "a.dcm")
    path, header = _landed(archive, source)
    digest = DataSetDigest()
    data_set = data_set_bytes(source)
    for start in range(0, len(data_set), 100):  # as fragments arrive
        digest.feed(data_set[start:start + 100])
    expected = hashlib.sha1(data_set).hexdigest()

    def no_read(*_args, **_kwargs):
        raise AssertionError("the data set was read again")

    monkeypatch.setattr(archive_module.hashlib, "sha1", no_read)  # hashlib's own, for the call
    receipt = archive.receive(path, adopt=True, landed=digest.result())
    assert receipt.outcome.value == "stored"
    record = archive.instance(header.SOPInstanceUID)
    assert record.sha1 == expected
    assert record.size == archive.blobstore.size(record.blob_key)
    assert record.study_instance_uid == header.StudyInstanceUID


def test_a_landed_digest_that_does_not_fit_the_file_is_not_trusted(archive, tmp_path):
    """A digest of fewer bytes than the file holds (something else wrote to it): the archive
    hashes the file itself."""
    from dicom.landing import DataSetDigest

    source = small_instance(tmp_path / "a.dcm")
    path, header = _landed(archive, source)
    digest = DataSetDigest()
    digest.feed(b"not the data set")

    assert archive.receive(path, adopt=True, landed=digest.result()).outcome.value == "stored"
    assert archive.instance(header.SOPInstanceUID).sha1 == \
        hashlib.sha1(data_set_bytes(source)).hexdigest()


def test_a_failed_commit_keeps_the_file_the_database_may_name(archive, tmp_path):
    """The commit's answer may be lost after the database completed it: the file stays (an
    unnamed one is only unused space; a row without its file would be a lost instance)."""
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    def lost_commit(_connection):
        raise OperationalError("COMMIT", {}, Exception("server closed the connection"))

    source = small_instance(tmp_path / "a.dcm")
    landed, header = _landed(archive, source)
    event.listen(archive.engine, "commit", lost_commit)
    try:
        with pytest.raises(OperationalError):
            archive.receive(landed, adopt=True)
    finally:
        event.remove(archive.engine, "commit", lost_commit)
    [kept] = _blob_files(archive)
    assert kept.read_bytes().endswith(data_set_bytes(source))
