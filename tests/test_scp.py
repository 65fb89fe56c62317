"""The DICOM server against real senders: dcmtk's storescu and echoscu, and pynetdicom as the
Storage Commitment SCU (dcmtk has none). Everything runs on 127.0.0.1 with free ports."""

from __future__ import annotations

import copy
import os
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    SecondaryCaptureImageStorage,
    StorageCommitmentPushModel,
)

from tests.conftest import require_tool
from tests.servers import free_port
from tests.test_archive import (
    DEPT,
    STUDY_PREFIX,
    data_set_bytes,
    dept_images,
    new_archive,
    small_instance,
    stored_data_set_bytes,
)

AE_TITLE = "XDSI"
# storescu proposes only uncompressed syntaxes unless told which compressed one to add.
PROPOSE = {"1.2.840.10008.1.2.4.70": ["-xs"], "1.2.840.10008.1.2.4.51": ["-xx"]}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return new_archive(tmp_path_factory.mktemp("scp-archive"))


@pytest.fixture(scope="module")
def server(archive):
    from dicom.scp import DicomServer

    stored: list[str] = []
    port = free_port()
    dicom_server = DicomServer(archive, ae_title=AE_TITLE, port=port, on_stored=stored.append)
    dicom_server.start()
    dicom_server.stored_studies = stored
    yield dicom_server
    dicom_server.stop()


def dcmtk(tool: str, port: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TCP_NODELAY": "1"}
    return subprocess.run([require_tool(tool), "-aet", "SENDER", "-aec", AE_TITLE, *args,
                           "127.0.0.1", str(port)], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def storescu(port: int, *paths: Path, options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "TCP_NODELAY": "1"}
    command = [require_tool("storescu"), "-aet", "SENDER", "-aec", AE_TITLE, "-R", *options,
               "127.0.0.1", str(port), "+sd", *map(str, paths)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120,
                          check=False)


# -- C-ECHO and C-STORE ---------------------------------------------------------------------------


def test_echo(server):
    result = dcmtk("echoscu", server.port)
    assert result.returncode == 0, result.stderr


def test_each_association_gets_its_own_contexts_sharing_only_the_uids(server):
    """pynetdicom deep-copies the supported contexts for every association; ours share their
    (immutable) UIDs, so that copy is cheap, but an association never changes the server's."""
    originals = server._server.contexts
    copies = copy.deepcopy(originals)
    storage = [i for i, cx in enumerate(originals) if cx.abstract_syntax == CTImageStorage][0]
    original, clone = originals[storage], copies[storage]

    assert clone is not original and clone.transfer_syntax == original.transfer_syntax
    assert clone.abstract_syntax is original.abstract_syntax
    assert clone.transfer_syntax[0] is original.transfer_syntax[0]

    clone.context_id = 99
    clone.transfer_syntax = [ExplicitVRLittleEndian]
    assert original.context_id is None and len(original.transfer_syntax) > 1


def test_one_association_per_instance(server, archive, tmp_path):
    """Modalities often open an association for every instance they send."""
    paths = [small_instance(tmp_path / f"{n}.dcm") for n in range(3)]
    for path in paths:
        result = storescu(server.port, path)
        assert result.returncode == 0, result.stderr
    for path in paths:
        assert archive.instance(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.mark.parametrize("number", sorted(DEPT))
def test_storescu_sends_a_nist_study(server, archive, number):
    suffix, series_sizes, syntax = DEPT[number]
    study_uid = STUDY_PREFIX + suffix
    result = storescu(server.port, dept_images(number), options=tuple(PROPOSE.get(syntax, [])))
    assert result.returncode == 0, result.stderr

    # storescu re-encodes what it sends (it drops value padding, for one), so the stored file
    # is compared by content here; test_pynetdicom_sends_file_bytes... checks the raw bytes.
    sources = sorted(dept_images(number).iterdir())
    for source in sources:
        original = dcmread(source)
        record = archive.instance(original.SOPInstanceUID)
        assert record is not None and record.study_instance_uid == study_uid
        assert record.transfer_syntax_uid == syntax == original.file_meta.TransferSyntaxUID
        with archive.open_instance(original.SOPInstanceUID) as f:
            stored = dcmread(f)
        assert stored == original
        assert stored.PixelData == original.PixelData  # compressed frames untouched

    study = archive.study(study_uid)
    assert study.instance_count == len(sources) == sum(series_sizes)
    assert study.patient_id == f"IDS-DEPT{number}-a"
    assert sorted(s.instance_count for s in archive.series_of(study_uid)) == sorted(series_sizes)
    assert study_uid in server.stored_studies


def test_pynetdicom_sends_file_bytes_that_are_stored_identical(tmp_path):
    """pynetdicom's chunked sender puts each file's data set bytes on the wire unchanged: the
    stored data set must be those very bytes, compressed or not."""
    from pynetdicom import _config

    from dicom.scp import DicomServer

    archive = new_archive(tmp_path / "raw")
    port = free_port()
    dicom_server = DicomServer(archive, port=port)
    dicom_server.start()
    sources = [path for number in sorted(DEPT) for path in sorted(dept_images(number).iterdir())]
    ae = AE(ae_title="SENDER")
    for sop_class, syntax in sorted({(dcmread(p, stop_before_pixels=True).SOPClassUID,
                                      dcmread(p, stop_before_pixels=True).file_meta
                                      .TransferSyntaxUID) for p in sources}):
        ae.add_requested_context(sop_class, syntax)
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
        assert assoc.is_established
        statuses = [assoc.send_c_store(path).Status for path in sources]
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        dicom_server.stop()

    assert statuses == [0x0000] * len(sources) == [0x0000] * 106
    for source in sources:
        sop_uid = dcmread(source, stop_before_pixels=True).SOPInstanceUID
        assert stored_data_set_bytes(archive, sop_uid) == data_set_bytes(source)


# -- Duplicates ----------------------------------------------------------------------------------


def _send(port: int, dataset: Dataset) -> Dataset:
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(SecondaryCaptureImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        return assoc.send_c_store(dataset)
    finally:
        assoc.release()


def test_duplicate_identical_succeeds_and_different_content_fails(server, archive, tmp_path):
    first_path = small_instance(tmp_path / "first.dcm", description="first")
    first = dcmread(first_path)
    assert _send(server.port, first).Status == 0x0000
    assert _send(server.port, first).Status == 0x0000  # identical: accepted again
    assert archive.study(first.StudyInstanceUID).instance_count == 1

    second = dcmread(small_instance(tmp_path / "second.dcm", study_uid=first.StudyInstanceUID,
                                    sop_uid=first.SOPInstanceUID, description="second"))
    status = _send(server.port, second)
    assert status.Status == 0x0110  # processing failure, with the reason
    assert "other data set bytes" in status.ErrorComment
    assert stored_data_set_bytes(archive, first.SOPInstanceUID) == data_set_bytes(first_path)
    assert archive.header(first.SOPInstanceUID).StudyDescription == "first"


def test_unreadable_identity_is_refused(server, archive, tmp_path):
    dataset = dcmread(small_instance(tmp_path / "a.dcm"))
    dataset.SeriesInstanceUID = "1.2.bad"
    status = _send(server.port, dataset)
    assert status.Status == 0xC000
    assert archive.instance(dataset.SOPInstanceUID) is None


# -- Character sets ------------------------------------------------------------------------------

NAMES = {
    "ISO_IR 100": "Müller^Jürgen",
    "ISO_IR 192": "Wang^XiaoDong=王^小東",
    "ISO_IR 126": "Διονυσιος^Γεώργιος",
    "\\ISO 2022 IR 87": "Yamada^Tarou=山田^太郎=やまだ^たろう",
}


@pytest.mark.parametrize("charset", sorted(NAMES))
def test_character_sets_arrive_and_leave_intact(server, archive, tmp_path, charset):
    folder = tmp_path / "send"
    folder.mkdir()
    source = small_instance(folder / "a.dcm", patient_name=NAMES[charset],
                            charset=charset.split("\\") if "\\" in charset else charset)
    header = dcmread(source)
    assert str(header.PatientName) == NAMES[charset]  # pydicom wrote and reads it back

    result = storescu(server.port, folder)
    assert result.returncode == 0, result.stderr

    assert stored_data_set_bytes(archive, header.SOPInstanceUID) == data_set_bytes(source)
    assert str(archive.header(header.SOPInstanceUID).PatientName) == NAMES[charset]
    study = archive.study(header.StudyInstanceUID)
    assert study.patient_name == NAMES[charset]
    assert study.specific_character_set == charset


# -- Storage Commitment --------------------------------------------------------------------------


def _commitment_request(references: list[tuple[str, str]]) -> Dataset:
    request = Dataset()
    request.TransactionUID = generate_uid()
    items = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    request.ReferencedSOPSequence = items
    return request


def _request_commitment(port: int, references) -> tuple[Dataset, list]:
    """N-ACTION on one association, then wait there for the N-EVENT-REPORT."""
    reports = []
    received = threading.Event()

    def on_report(event):
        reports.append((event.event_type, event.event_information))
        received.set()
        return 0x0000, None

    ae = AE(ae_title="COMMITTER")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE,
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    assert assoc.is_established
    request = _commitment_request(references)
    try:
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel,
                                        "1.2.840.10008.1.20.1.1")
        assert status.Status == 0x0000
        assert received.wait(20), "no N-EVENT-REPORT on the association"
    finally:
        assoc.release()
    [(event_type, info)] = reports
    assert info.TransactionUID == request.TransactionUID
    return event_type, info


def test_storage_commitment_reports_stored_and_failed(server, archive, tmp_path):
    stored = dcmread(small_instance(tmp_path / "a.dcm"))
    assert _send(server.port, stored).Status == 0x0000
    unknown = generate_uid()
    references = [(SecondaryCaptureImageStorage, stored.SOPInstanceUID),
                  (SecondaryCaptureImageStorage, unknown)]

    event_type, info = _request_commitment(server.port, references)
    assert event_type == 2
    assert [i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence] == [
        stored.SOPInstanceUID]
    [failed] = info.FailedSOPSequence
    assert (failed.ReferencedSOPInstanceUID, failed.FailureReason) == (unknown, 0x0112)

    event_type, info = _request_commitment(server.port, references[:1])
    assert event_type == 1
    assert "FailedSOPSequence" not in info
    assert len(info.ReferencedSOPSequence) == 1


def test_storage_commitment_class_mismatch_fails(server, archive, tmp_path):
    stored = dcmread(small_instance(tmp_path / "a.dcm"))
    assert _send(server.port, stored).Status == 0x0000
    event_type, info = _request_commitment(
        server.port, [("1.2.840.10008.5.1.4.1.1.2", stored.SOPInstanceUID)])
    assert event_type == 2
    assert info.FailedSOPSequence[0].FailureReason == 0x0119


def test_storage_commitment_report_on_a_new_association(archive, tmp_path):
    """The requester releases at once: the report comes on an association we open to it."""
    from dicom.scp import DicomServer

    stored = dcmread(small_instance(tmp_path / "a.dcm"))
    archive.store(small_instance(tmp_path / "b.dcm", sop_uid=stored.SOPInstanceUID,
                                 study_uid=stored.StudyInstanceUID))

    reports = []
    received = threading.Event()

    def on_report(event):
        reports.append((event.event_type, event.event_information, event.assoc.requestor.ae_title))
        received.set()
        return 0x0000, None

    requester_port = free_port()
    requester = AE(ae_title="COMMITTER")
    requester.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    listener = requester.start_server(("127.0.0.1", requester_port), block=False,
                                      evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    port = free_port()
    dicom_server = DicomServer(archive, port=port,
                               peers={"COMMITTER": ("127.0.0.1", requester_port)})
    dicom_server.start()
    try:
        ae = AE(ae_title="COMMITTER")
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
        request = _commitment_request([(SecondaryCaptureImageStorage, stored.SOPInstanceUID)])
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel,
                                        "1.2.840.10008.1.20.1.1")
        assert status.Status == 0x0000
        assoc.release()
        assert received.wait(40), "no N-EVENT-REPORT on a new association"
    finally:
        dicom_server.stop()
        listener.shutdown()
    [(event_type, info, calling)] = reports
    assert (event_type, info.TransactionUID, calling) == (1, request.TransactionUID, AE_TITLE)


def test_counts_match_the_readme(archive, server):
    """After the parametrized sends: every DEPT study with images, no more and no less."""
    counts = Counter()
    for number, (suffix, series_sizes, _) in DEPT.items():
        study = archive.study(STUDY_PREFIX + suffix)
        if study is None:
            pytest.skip("run with the storescu tests")
        counts[number] = study.instance_count
        assert len(archive.series_of(study.study_instance_uid)) == len(series_sizes)
    assert sum(counts.values()) == 106
