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


def _env(**settings):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("XDSI_")}
    return {**env, **settings}


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_database_is_one_line_without_password(tmp_path):
    url = f"postgresql+psycopg://someone:secret@127.0.0.1:{_free_port()}/xdsi"
    result = xdsi("jobs", cwd=tmp_path, env=_env(XDSI_STORAGE_DATABASE_URL=url))
    assert result.returncode == 1
    assert "the database cannot be used" in result.stderr and "refused" in result.stderr
    assert "secret" not in result.stderr and "Traceback" not in result.stderr


def test_unsupported_database_is_a_configuration_error(tmp_path):
    result = xdsi("jobs", cwd=tmp_path, env=_env(XDSI_STORAGE_DATABASE_URL="mysql://db/xdsi"))
    assert result.returncode == 2
    assert "storage.database_url" in result.stderr and "Traceback" not in result.stderr


def test_import_of_a_missing_path_says_so(tmp_path):
    result = xdsi("import", str(tmp_path / "nothing-here"), cwd=tmp_path)
    assert result.returncode == 2
    assert "no such file or folder" in result.stderr and "Traceback" not in result.stderr


def test_a_config_that_is_a_folder_or_not_text_is_a_configuration_error(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe\x00garbage")
    for config in ("folder", "binary.toml"):
        result = xdsi("--config", config, "jobs", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "configuration error" in result.stderr and "Traceback" not in result.stderr


def test_an_empty_xdsi_config_counts_as_unset(tmp_path):
    result = xdsi("import", str(ROOT / "README.md"), cwd=tmp_path, env=_env(XDSI_CONFIG=""))
    assert result.returncode == 0, result.stderr
    assert "1 not DICOM" in result.stdout


def test_jobs_and_publish_away_from_the_service_make_no_database(tmp_path):
    for command in (("jobs",), ("publish", "1.2.3")):
        result = xdsi(*command, cwd=tmp_path, env=_env())
        assert result.returncode == 1
        assert "no database at" in result.stderr and "--config" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_publish_with_no_running_service_says_so_at_once(tmp_path):
    assert xdsi("import", str(ROOT / "README.md"), cwd=tmp_path, env=_env()).returncode == 0
    result = xdsi("publish", "1.2.3", cwd=tmp_path, env=_env())
    assert result.returncode == 1
    assert "no running 'xdsi serve' uses this database" in result.stderr
    assert "queued" in xdsi("jobs", cwd=tmp_path, env=_env()).stdout


def test_serve_on_a_taken_port_says_which_setting(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = xdsi("serve", cwd=tmp_path,
                      env=_env(XDSI_DICOM_PORT=str(port), XDSI_SERVER_PORT=str(_free_port())))
    assert result.returncode == 1
    assert f"DICOM (dicom.host, dicom.port) 127.0.0.1:{port} cannot be used" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_port_check_knows_ipv6_hosts():
    import socket

    import pytest

    from xds.runtime import StartError, _check_port

    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    with socket.socket(socket.AF_INET6) as taken:
        try:
            taken.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback here")
        port = taken.getsockname()[1]
        taken.listen()
        with pytest.raises(StartError, match="cannot be used"):
            _check_port("::1", port, "HTTP")
    _check_port("::1", port, "HTTP")  # free again: no error


def test_http_and_dicom_on_one_port_is_a_configuration_error(tmp_path):
    result = xdsi("serve", cwd=tmp_path, env=_env(XDSI_SERVER_PORT="18080", XDSI_DICOM_PORT="18080"))
    assert result.returncode == 2 and "dicom.port" in result.stderr
