"""C-FIND, C-MOVE and C-GET against the archive, driven by dcmtk's findscu, movescu and getscu.

Our Q/R SCP is a pynetdicom AE on 127.0.0.1 with the handlers of ``dicom.qr``; the C-MOVE
destination is a pynetdicom storage SCP on 127.0.0.1 that keeps the raw data set bytes it
receives, so a moved instance can be compared byte for byte with the stored one.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from pathlib import Path
from typing import Self

import pytest
from pydicom import dcmread
from pydicom.filereader import read_preamble
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from tests.conftest import require_tool
from tests.servers import free_port
from tests.test_wado import STUDY_002, STUDY_021, STUDY_024, load_archive

OUR_AE = "XDSI"
DESTINATION_AE = "DEST"


def dataset_bytes(part10: bytes) -> bytes:
    """The data set of a Part 10 file, without preamble and File Meta Information."""
    from io import BytesIO

    from pydicom.filereader import _read_file_meta_info

    stream = BytesIO(part10)
    read_preamble(stream, False)
    _read_file_meta_info(stream)
    return part10[stream.tell():]


def stored_dataset_bytes(archive, sop_uid: str) -> bytes:
    with archive.open_instance(sop_uid) as f:
        return dataset_bytes(f.read())


class Destination:
    """A storage SCP that records every data set it receives, as sent on the wire."""

    def __init__(self):
        self.received: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.port = free_port()
        self.ae = AE(ae_title=DESTINATION_AE)
        for context in StoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)

    def _on_store(self, event):
        with self.lock:
            self.received[event.request.AffectedSOPInstanceUID] = event.request.DataSet.getvalue()
        return 0x0000

    def __enter__(self) -> Self:
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return load_archive(tmp_path_factory.mktemp("qr-archive"))


@pytest.fixture(scope="module")
def destination():
    with Destination() as dest:
        yield dest


@pytest.fixture(scope="module")
def scp(archive, destination):
    """Our Q/R SCP on 127.0.0.1: (port, AE)."""
    from dicom.qr import add_query_retrieve_contexts, query_retrieve_handlers

    ae = AE(ae_title=OUR_AE)
    ae.add_supported_context(Verification)
    add_query_retrieve_contexts(ae)
    handlers = query_retrieve_handlers(
        archive, {DESTINATION_AE: ("127.0.0.1", destination.port)})
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    yield port
    server.shutdown()


def dcmtk(tool: str, port: int, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    path = require_tool(tool)
    env = {**os.environ, "TCP_NODELAY": "1"}
    return subprocess.run([path, "-aec", OUR_AE, "-d", *args, "127.0.0.1", str(port)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=60,
                          check=False)


def find(port: int, tmp_path: Path, *keys: str, model: str = "-S") -> list:
    """findscu with the given keys; the responses it extracted, as datasets."""
    out = tmp_path / f"find-{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    args = [model, "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    result = dcmtk("findscu", port, *args)
    assert result.returncode == 0, result.stderr + result.stdout
    return [dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


def final_response(result: subprocess.CompletedProcess, operation: str) -> dict[str, int]:
    """Sub-operation counts and status of the last C-FIND/C-MOVE/C-GET response, read from
    dcmtk's debug dump of each incoming message."""
    blocks = [block.split("END DIMSE MESSAGE", 1)[0]
              for block in result.stderr.split("INCOMING DIMSE MESSAGE")[1:]]
    text = [block for block in blocks if f"C-{operation.upper()} RSP" in block][-1]
    counts = {name: int(value) for name, value in
              re.findall(r"(Remaining|Completed|Failed|Warning) Suboperations\s*:\s*(\d+)", text)}
    counts["Status"] = int(re.search(r"DIMSE Status\s*:\s*0x([0-9a-f]{4})", text).group(1), 16)
    return counts


# -- C-FIND --------------------------------------------------------------------------------------


def test_find_studies_universal_and_single_value(scp, tmp_path):
    answers = find(scp, tmp_path, "QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientID",
                   "AccessionNumber", "StudyDate")
    assert {a.StudyInstanceUID for a in answers} == {STUDY_002, STUDY_021, STUDY_024}
    by_study = {a.StudyInstanceUID: a for a in answers}
    assert by_study[STUDY_002].PatientID == "IDS-DEPT002-a"
    assert by_study[STUDY_002].AccessionNumber == "IDC002-a"
    assert by_study[STUDY_021].StudyDate == "20150321"
    for answer in answers:
        assert answer.QueryRetrieveLevel == "STUDY"
        assert answer.SpecificCharacterSet == "ISO_IR 192"

    [answer] = find(scp, tmp_path, "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                    "AccessionNumber=IDC024-a")
    assert answer.StudyInstanceUID == STUDY_024


def test_find_studies_with_wildcards(scp, tmp_path):
    answers = find(scp, tmp_path, "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                   "PatientName=Multi*")
    assert [a.StudyInstanceUID for a in answers] == [STUDY_002]
    assert str(answers[0].PatientName) == "Multi^Mr^a"

    answers = find(scp, tmp_path, "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                   "PatientID=IDS-DEPT02?-a")
    assert {a.StudyInstanceUID for a in answers} == {STUDY_021, STUDY_024}


def test_find_studies_by_date_range(scp, tmp_path):
    march = find(scp, tmp_path, "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                 "StudyDate=20150301-20150331")
    assert {a.StudyInstanceUID for a in march} == {STUDY_021, STUDY_024}

    until = find(scp, tmp_path, "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                 "StudyDate=-20150202")
    assert [a.StudyInstanceUID for a in until] == [STUDY_002]

    since = find(scp, tmp_path, "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                 "StudyDate=20150322-")
    assert [a.StudyInstanceUID for a in since] == [STUDY_024]


def test_find_studies_by_modality_with_counts(scp, tmp_path):
    [answer] = find(scp, tmp_path, "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                    "ModalitiesInStudy=PT", "NumberOfStudyRelatedSeries",
                    "NumberOfStudyRelatedInstances")
    assert answer.StudyInstanceUID == STUDY_024
    assert answer.ModalitiesInStudy == "PT"
    assert (answer.NumberOfStudyRelatedSeries, answer.NumberOfStudyRelatedInstances) == (1, 10)


def test_find_series_and_images(archive, scp, tmp_path):
    series = find(scp, tmp_path, "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={STUDY_002}",
                  "SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances")
    assert {s.Modality for s in series} == {"MR"}
    assert sorted(s.NumberOfSeriesRelatedInstances for s in series) == [16, 20]
    expected_series = {r.series_instance_uid for r in archive.instances_of(STUDY_002)}
    assert {s.SeriesInstanceUID for s in series} == expected_series

    second = next(s.SeriesInstanceUID for s in series if s.NumberOfSeriesRelatedInstances == 16)
    images = find(scp, tmp_path, "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={STUDY_002}",
                  f"SeriesInstanceUID={second}", "SOPInstanceUID", "SOPClassUID")
    expected = {r.sop_instance_uid for r in archive.instances_of(STUDY_002, second)}
    assert {i.SOPInstanceUID for i in images} == expected
    assert {i.SOPClassUID for i in images} == {"1.2.840.10008.5.1.4.1.1.4"}

    # Modality as a matching key at SERIES level, across studies.
    pet = find(scp, tmp_path, "QueryRetrieveLevel=SERIES", "StudyInstanceUID",
               "SeriesInstanceUID", "Modality=PT")
    assert [s.StudyInstanceUID for s in pet] == [STUDY_024]


def test_find_patients_in_the_patient_root_model(scp, tmp_path):
    answers = find(scp, tmp_path, "QueryRetrieveLevel=PATIENT", "PatientID=IDS-DEPT0*",
                   "PatientName", "PatientBirthDate", model="-P")
    assert sorted(a.PatientID for a in answers) == ["IDS-DEPT002-a", "IDS-DEPT021-a",
                                                    "IDS-DEPT024-a"]
    by_id = {a.PatientID: a for a in answers}
    assert str(by_id["IDS-DEPT021-a"].PatientName) == "Xra^William^a"
    assert by_id["IDS-DEPT021-a"].PatientBirthDate == "19780321"


def test_find_refuses_patient_level_in_the_study_root_model(scp, tmp_path):
    result = dcmtk("findscu", scp, "-S", "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID")
    assert final_response(result, "Find")["Status"] == 0xA900


# -- C-MOVE --------------------------------------------------------------------------------------


def test_move_series_to_a_configured_destination(archive, scp, destination):
    series = min({r.series_instance_uid for r in archive.instances_of(STUDY_002)})
    expected = {r.sop_instance_uid for r in archive.instances_of(STUDY_002, series)}
    destination.received.clear()

    result = dcmtk("movescu", scp, "-S", "-aem", DESTINATION_AE,
                   "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={STUDY_002}",
                   "-k", f"SeriesInstanceUID={series}")
    assert result.returncode == 0, result.stderr
    assert final_response(result, "Move") == {"Remaining": 0, "Completed": len(expected),
                                              "Failed": 0, "Warning": 0, "Status": 0}

    assert set(destination.received) == expected
    for sop_uid, data in destination.received.items():
        assert data == stored_dataset_bytes(archive, sop_uid)


def test_move_a_compressed_study(archive, scp, destination):
    destination.received.clear()
    result = dcmtk("movescu", scp, "-P", "-aem", DESTINATION_AE, "-k", "QueryRetrieveLevel=STUDY",
                   "-k", "PatientID=IDS-DEPT021-a", "-k", f"StudyInstanceUID={STUDY_021}")
    assert result.returncode == 0, result.stderr
    [record] = archive.instances_of(STUDY_021)
    assert destination.received[record.sop_instance_uid] == stored_dataset_bytes(
        archive, record.sop_instance_uid)


def test_move_to_an_unknown_destination_is_refused(scp, destination):
    destination.received.clear()
    result = dcmtk("movescu", scp, "-S", "-aem", "NOWHERE", "-k", "QueryRetrieveLevel=STUDY",
                   "-k", f"StudyInstanceUID={STUDY_024}")
    assert final_response(result, "Move")["Status"] == 0xA801
    assert destination.received == {}


# -- C-GET ---------------------------------------------------------------------------------------


def test_get_study_on_the_same_association(archive, scp, tmp_path):
    result = dcmtk("getscu", scp, "-S", "+B", "-od", str(tmp_path),
                   "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY_024}")
    assert result.returncode == 0, result.stderr
    assert final_response(result, "Get") == {"Remaining": 0, "Completed": 10, "Failed": 0,
                                             "Warning": 0, "Status": 0}

    files = list(tmp_path.iterdir())
    expected = {r.sop_instance_uid for r in archive.instances_of(STUDY_024)}
    assert len(files) == len(expected) == 10
    for path in files:
        data = path.read_bytes()
        sop_uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert sop_uid in expected
        assert dataset_bytes(data) == stored_dataset_bytes(archive, sop_uid)


def test_get_single_image(archive, scp, tmp_path):
    record = archive.instances_of(STUDY_002)[7]
    result = dcmtk("getscu", scp, "-S", "+B", "-od", str(tmp_path),
                   "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={STUDY_002}",
                   "-k", f"SeriesInstanceUID={record.series_instance_uid}",
                   "-k", f"SOPInstanceUID={record.sop_instance_uid}")
    assert result.returncode == 0, result.stderr
    [path] = list(tmp_path.iterdir())
    assert dataset_bytes(path.read_bytes()) == stored_dataset_bytes(archive,
                                                                    record.sop_instance_uid)
