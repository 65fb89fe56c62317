"""The ``xdsi`` command line: help, import, jobs, configuration errors."""

import subprocess
import sys

from tests.conftest import NIST_IDS, ROOT


def xdsi(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "xds.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=120)


def test_help_lists_the_commands(tmp_path):
    result = xdsi("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("serve", "import", "publish", "jobs"):
        assert command in result.stdout


def test_import_then_jobs_in_a_working_folder(tmp_path):
    result = xdsi("import", str(NIST_IDS / "IDS-DEPT003-a" / "images"), str(ROOT / "README.md"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "21 files: 20 stored, 0 duplicate, 0 conflict, 0 invalid, 1 not DICOM" in result.stdout, result.stdout
    assert "21/21 files" in result.stderr  # the progress bar

    again = xdsi("import", str(NIST_IDS / "IDS-DEPT003-a" / "images"), cwd=tmp_path)
    assert "20 files: 0 stored, 20 duplicate" in again.stdout, again.stdout

    jobs = xdsi("jobs", cwd=tmp_path)
    assert jobs.returncode == 0 and "no publishing jobs" in jobs.stdout

    queued = xdsi("publish", "--no-wait", "1.2.3.4", cwd=tmp_path)
    assert queued.returncode == 0 and "queued" in queued.stdout
    listing = xdsi("jobs", cwd=tmp_path)
    assert "queued" in listing.stdout and "1.2.3.4" in listing.stdout


def test_invalid_configuration_names_the_key(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[server]\nport = 0\n")
    result = xdsi("--config", str(config), "serve", cwd=tmp_path)
    assert result.returncode == 2
    assert "server.port" in result.stderr


def test_unknown_profile_stops_the_start_with_a_message(tmp_path):
    result = xdsi("serve", "--profile", "no-such-profile", cwd=tmp_path)
    assert result.returncode == 2
    assert "source.profile" in result.stderr and "no-such-profile" in result.stderr
    assert "Traceback" not in result.stderr
