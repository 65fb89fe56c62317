"""Helpers shared by the archive, SCP and import tests."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.conftest import NIST_IDS

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

# The DEPT studies with images (README §3.1): folder -> (study UID suffix, series sizes,
# transfer syntax of the files).
DEPT = {
    "002": ("201604020954059", [16, 20], "1.2.840.10008.1.2.1"),
    "003": ("201604020955010", [10, 10], "1.2.840.10008.1.2.1"),
    "011": ("201604020955021", [16, 20], "1.2.840.10008.1.2.1"),
    "021": ("201604020955043", [1], "1.2.840.10008.1.2.4.70"),
    "022": ("201604020955054", [1], "1.2.840.10008.1.2.1"),
    "024": ("201604020956016", [10], "1.2.840.10008.1.2.1"),
    "041": ("201604020957000", [1], "1.2.840.10008.1.2.4.70"),
    "042": ("201604020957011", [1], "1.2.840.10008.1.2.4.51"),
}
STUDY_PREFIX = "1.3.6.1.4.1.21367.201599.1."


def dept_images(number: str) -> Path:
    return NIST_IDS / f"IDS-DEPT{number}-a" / "images"


def new_archive(root: Path):
    """An empty archive: SQLite index and file blob store under ``root``."""
    from dicom.archive import Archive
    from dicom.index import create_index_tables
    from xds.blobstore import FileBlobStore
    from xds.db import create_engine

    root.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{root / 'index.db'}")
    create_index_tables(engine)
    return Archive(engine, FileBlobStore(root / "blobs"))


def split_part10(data: bytes) -> tuple[Dataset, bytes]:
    """(File Meta Information, data set bytes) of a Part 10 file's content."""
    stream = BytesIO(data)
    read_preamble(stream, False)
    meta = _read_file_meta_info(stream)
    return meta, data[stream.tell():]


def data_set_bytes(path: Path) -> bytes:
    return split_part10(path.read_bytes())[1]


def stored_data_set_bytes(archive, sop_instance_uid: str) -> bytes:
    with archive.open_instance(sop_instance_uid) as f:
        return split_part10(f.read())[1]


def small_instance(path: Path, *, study_uid: str | None = None, sop_uid: str | None = None,
                   patient_name: str = "Test^Patient", charset: str | None = None,
                   description: str = "first", rows: int = 4) -> Path:
    """A small Secondary Capture instance written as a Part 10 file (Explicit VR LE)."""
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = "PID-1"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20240105"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC-1"
    ds.StudyID = "1"
    ds.StudyDescription = description
    ds.ReferringPhysicianName = ""
    ds.Modality = "OT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = 4
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(rows * 4))

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return path


# -- Tests of dicom.archive ----------------------------------------------------------------------

import threading
from datetime import UTC, datetime, timedelta

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset as _Dataset


@pytest.fixture
def archive(tmp_path):
    return new_archive(tmp_path / "archive")


def test_store_keeps_the_data_set_bytes_and_indexes_all_levels(archive, tmp_path):
    source = small_instance(tmp_path / "a.dcm")
    assert archive.store(source).value == "stored"

    header = dcmread(source, stop_before_pixels=True)
    sop_uid = header.SOPInstanceUID
    assert stored_data_set_bytes(archive, sop_uid) == data_set_bytes(source)
    with archive.open_instance(sop_uid) as f:
        meta, _ = split_part10(f.read())
    assert meta.MediaStorageSOPInstanceUID == sop_uid
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert meta.ImplementationClassUID != source and meta.ImplementationVersionName

    [record] = archive.instances_of(header.StudyInstanceUID)
    assert (record.sop_class_uid, record.series_instance_uid) == (SECONDARY_CAPTURE,
                                                                  header.SeriesInstanceUID)
    assert record.size == archive.blobstore.size(record.blob_key)
    assert archive.is_durable(sop_uid)
    study = archive.study(header.StudyInstanceUID)
    assert (study.patient_id, study.patient_name, study.accession_number) == (
        "PID-1", "Test^Patient", "ACC-1")
    assert (study.instance_count, study.modalities) == (1, ["OT"])
    [series] = archive.series_of(header.StudyInstanceUID)
    assert (series.modality, series.series_number, series.instance_count) == ("OT", 1, 1)
    assert "PixelData" not in archive.header(sop_uid)
    assert archive.header(sop_uid).PatientName == "Test^Patient"


def test_identical_duplicate_is_accepted_without_rewriting(archive, tmp_path):
    source = small_instance(tmp_path / "a.dcm")
    sop_uid = dcmread(source).SOPInstanceUID
    assert archive.store(source).value == "stored"
    record = archive.instance(sop_uid)
    inode = archive.blobstore.path(record.blob_key).stat().st_ino

    assert archive.store(source).value == "duplicate"
    assert archive.instance(sop_uid) == record
    assert archive.blobstore.path(record.blob_key).stat().st_ino == inode
    assert archive.study(record.study_instance_uid).instance_count == 1
    assert list(archive.blobstore.tmp.iterdir()) == []  # no spool left behind


def test_different_content_under_the_same_uid_is_refused_and_logged(archive, tmp_path, caplog):
    first = small_instance(tmp_path / "a.dcm", description="first")
    header = dcmread(first)
    second = small_instance(tmp_path / "b.dcm", study_uid=header.StudyInstanceUID,
                            sop_uid=header.SOPInstanceUID, description="second")
    archive.store(first)

    with caplog.at_level("WARNING", logger="dicom.archive"):
        assert archive.store(second).value == "conflict"
    assert header.SOPInstanceUID in caplog.text and "different content" in caplog.text
    assert stored_data_set_bytes(archive, header.SOPInstanceUID) == data_set_bytes(first)
    assert archive.header(header.SOPInstanceUID).StudyDescription == "first"
    assert list(archive.blobstore.tmp.iterdir()) == []


def test_invalid_instances_are_refused_and_leave_nothing(archive, tmp_path):
    bad = small_instance(tmp_path / "bad.dcm")
    ds = dcmread(bad)
    ds.StudyInstanceUID = "not a uid"
    ds.save_as(bad)
    assert archive.store(bad).value == "invalid"

    mismatch = small_instance(tmp_path / "mismatch.dcm")
    ds = dcmread(mismatch)
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.save_as(mismatch)
    assert archive.store(mismatch).value == "invalid"

    assert archive.studies() == []
    assert list(archive.blobstore.tmp.iterdir()) == []


def test_bare_data_set_with_its_transfer_syntax(archive, tmp_path):
    source = small_instance(tmp_path / "a.dcm")
    bare = tmp_path / "bare"
    bare.write_bytes(data_set_bytes(source))
    with pytest.raises(ValueError):
        archive.store(bare, is_part10=False)  # the transfer syntax must be given
    assert archive.store(bare, is_part10=False,
                         transfer_syntax_uid="1.2.840.10008.1.2.1").value == "stored"
    sop_uid = dcmread(source).SOPInstanceUID
    assert stored_data_set_bytes(archive, sop_uid) == data_set_bytes(source)
    assert dcmread(archive.open_instance(sop_uid)).PixelData == dcmread(source).PixelData


def test_study_attributes_from_sequences_and_stability(archive, tmp_path):
    source = small_instance(tmp_path / "a.dcm")
    ds = dcmread(source)
    issuer = _Dataset()
    issuer.LocalNamespaceEntityID = "RIS"
    issuer.UniversalEntityID = "1.2.3.4.5"
    issuer.UniversalEntityIDType = "ISO"
    ds.IssuerOfAccessionNumberSequence = [issuer]
    code = _Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "CTHEAD", "99LOCAL", "CT head"
    ds.ProcedureCodeSequence = [code]
    ds.IssuerOfPatientID = "HOSP"
    ds.BodyPartExamined = "HEAD"
    ds.save_as(source)
    archive.store(source)

    study = archive.study(ds.StudyInstanceUID)
    assert study.accession_issuer_oid == "1.2.3.4.5"
    assert study.accession_issuer_local_id == "RIS"
    assert study.procedure_codes == [("CTHEAD", "99LOCAL", "CT head")]
    assert study.issuer_of_patient_id == "HOSP"
    assert study.body_parts == ["HEAD"]
    assert study.updated_at.tzinfo is not None

    assert archive.stable_studies(datetime.now(UTC) + timedelta(seconds=5)) == [
        ds.StudyInstanceUID]
    assert archive.stable_studies(datetime.now(UTC) - timedelta(minutes=5)) == []
    assert archive.study("1.2.3") is None and archive.instance("1.2.3") is None
    assert not archive.is_durable("1.2.3")


def test_concurrent_stores_of_one_study(archive, tmp_path):
    study_uid = "1.2.826.0.1.3680043.8.498.1"
    files = [small_instance(tmp_path / f"{n}.dcm", study_uid=study_uid) for n in range(24)]
    outcomes = []

    def worker(chunk):
        for path in chunk:
            outcomes.append(archive.store(path).value)
            outcomes.append(archive.store(path).value)

    threads = [threading.Thread(target=worker, args=(files[n::4],)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["duplicate"] * 24 + ["stored"] * 24
    assert archive.study(study_uid).instance_count == 24
    assert len(archive.instances_of(study_uid)) == 24
    assert len(archive.series_of(study_uid)) == 24
