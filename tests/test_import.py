"""import_paths: files and folders archived without the network."""

from __future__ import annotations

import pytest
from pydicom import dcmread

from tests.test_archive import (
    DEPT,
    STUDY_PREFIX,
    data_set_bytes,
    dept_images,
    new_archive,
    small_instance,
    stored_data_set_bytes,
)


def test_import_a_folder_with_a_non_dicom_file(tmp_path):
    from dicom.importer import import_paths

    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    first = small_instance(folder / "a.dcm")
    small_instance(folder / "sub" / "b.dcm", study_uid=dcmread(first).StudyInstanceUID)
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "sub" / "empty").write_bytes(b"")
    conflicting = small_instance(tmp_path / "other.dcm", sop_uid=dcmread(first).SOPInstanceUID,
                                 description="changed")

    archive = new_archive(tmp_path / "archive")
    calls = []
    summary = import_paths([folder, first, conflicting], archive,
                           progress=lambda done, total: calls.append((done, total)))

    assert (summary.stored, summary.duplicate, summary.conflict, summary.not_dicom) == (2, 1, 1, 2)
    assert summary.files == 6
    assert calls == [(n, 6) for n in range(1, 7)]
    assert archive.study(dcmread(first).StudyInstanceUID).instance_count == 2
    assert stored_data_set_bytes(archive, dcmread(first).SOPInstanceUID) == data_set_bytes(first)
    assert "2 not DICOM" in str(summary)


def test_import_nist_studies_byte_identical(tmp_path):
    from dicom.importer import import_paths

    archive = new_archive(tmp_path / "archive")
    summary = import_paths([dept_images(n) for n in sorted(DEPT)], archive)
    assert (summary.stored, summary.not_dicom, len(summary.studies)) == (106, 0, 8)
    for suffix, series_sizes, syntax in DEPT.values():
        instances = archive.instances_of(STUDY_PREFIX + suffix)
        assert len(instances) == sum(series_sizes)
        assert {i.transfer_syntax_uid for i in instances} == {syntax}
    source = min(dept_images("021").iterdir())
    sop_uid = dcmread(source, stop_before_pixels=True).SOPInstanceUID
    assert stored_data_set_bytes(archive, sop_uid) == data_set_bytes(source)


def test_import_missing_path_is_an_error(tmp_path):
    from dicom.importer import import_paths

    with pytest.raises(FileNotFoundError):
        import_paths([tmp_path / "absent"], new_archive(tmp_path / "archive"))
