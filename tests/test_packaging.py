"""An installed wheel (not only a checkout) carries what the service serves and reads."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from tests.conftest import ROOT


def test_the_wheel_holds_the_wsdls_schemas_and_profiles(tmp_path):
    # Built from a copy (a build writes beside the sources); the build backend comes from the
    # package index, as for any pip install.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "data", "build", "dist", "__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(tmp_path / "wheel"), str(source)],
                   check=True, capture_output=True, timeout=300)
    [wheel] = (tmp_path / "wheel").glob("xdsi-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, suffix, wanted in (("wsdl", ".wsdl", ROOT / "wsdl"), ("schemas", ".xsd", ROOT / "schemas")):
        shipped = {name.rsplit("/", 1)[1] for name in names
                   if f"/data/share/xdsi/{folder}/" in name}
        assert shipped == {path.name for path in wanted.glob(f"*{suffix}")}
    assert {"xds/profiles/default.toml", "xds/profiles/nist-ids.toml",
            "xds/profiles/example.toml"} <= names
    assert not any(name.startswith(("tests/", "scripts/")) for name in names)

    # Installed elsewhere than the environment (a --prefix, like /usr/local or ~/.local), the
    # service still finds them, from the installation's record.
    prefix = tmp_path / "prefix"
    # --ignore-installed: without it pip would first uninstall this environment's xdsi.
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--ignore-installed", "--prefix", str(prefix), str(wheel)], check=True,
                   capture_output=True, timeout=300)
    [site_packages] = prefix.glob("lib/python3*/site-packages")
    found = subprocess.run(
        [sys.executable, "-c", "import xds.service as s; print(s.WSDL_DIR); print(s.SCHEMA_DIR)"],
        cwd=tmp_path, env={"PYTHONPATH": str(site_packages), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True, timeout=120).stdout.split()
    assert found == [str(prefix / "share" / "xdsi" / "wsdl"), str(prefix / "share" / "xdsi" / "schemas")]
    assert "Editable project location" in subprocess.run(
        [sys.executable, "-m", "pip", "show", "xdsi"], capture_output=True, text=True).stdout
