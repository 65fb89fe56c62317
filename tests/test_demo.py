"""The README's main job, run as a user would: ``scripts/demo.py`` on a NIST study.

It starts ``xdsi serve`` as a separate process, sends the study with dcmtk's storescu, publishes
it with ``xdsi publish``, finds the manifest by ITI-18, reads it by ITI-43 and fetches one image
by RAD-69, all over HTTP and DICOM on 127.0.0.1.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from tests.conftest import NIST_IDS, ROOT, require_tool

pytestmark = pytest.mark.slow


def test_demo_runs_the_main_job_on_a_nist_study():
    require_tool("storescu")
    study = NIST_IDS / "IDS-DEPT003-a" / "images"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--profile", "nist-ids", str(study)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout
    assert "storescu: sent 20 of 20 instance(s) of study 1.3.6.1.4.1.21367.201599.1.201604020955010" in output
    assert "ITI-18 FindDocuments for the study's patient: 1 approved manifest(s)" in output
    assert "2 series, 20 instance(s)" in output
    assert "retrieve AE XDSI" in output
    assert "RAD-69 image" in output and "CT" in output


def test_demo_sends_compressed_images_in_their_own_transfer_syntax(tmp_path):
    """A user's folder of JPEG 2000 and RLE images goes out as stored (storescu -xv, -xr)."""
    require_tool("storescu")
    samples = Path(pydicom.__file__).parent / "data" / "test_files"
    for name in ("JPEG2000.dcm", "SC_rgb_rle.dcm"):
        shutil.copy(samples / name, tmp_path / name)
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("storescu: sent 1 of 1 instance(s)") == 2, result.stdout
    assert result.stdout.count("approved manifest(s)") == 2
