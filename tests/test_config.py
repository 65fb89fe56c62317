"""Configuration: defaults, TOML file, environment overrides, and errors that name the key."""

import pytest

from tests.conftest import ROOT
from xds.config import ConfigError, load


def test_defaults_are_the_standalone_service():
    settings = load(None, environ={})
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8080)
    assert settings.registry.embedded is True
    assert settings.database_url.startswith("sqlite:///")
    assert (settings.dicom.ae_title, settings.dicom.port) == ("XDSI", 11112)


def test_example_file_loads_and_equals_the_defaults():
    assert load(ROOT / "config.example.toml", environ={}) == load(None, environ={})


def test_file_then_environment_override(tmp_path):
    config = tmp_path / "xdsi.toml"
    config.write_text('[server]\nport = 9000\n[dicom]\nae_title = "ARCHIVE"\n')
    settings = load(config, environ={"XDSI_SERVER_PORT": "9100", "XDSI_REGISTRY_EMBEDDED": "false",
                                     "XDSI_REPOSITORY_REGISTRY_URL": "http://127.0.0.1:1/registry"})
    assert settings.server.port == 9100
    assert settings.dicom.ae_title == "ARCHIVE"
    assert settings.registry.embedded is False


@pytest.mark.parametrize("text, key", [
    ("[server]\nprot = 1\n", "server.prot"),
    ("[server]\nport = \"eighty\"\n", "server.port"),
    ("[nonsense]\nx = 1\n", "nonsense"),
    ("[repository]\nunique_id = \"not an oid\"\n", "repository.unique_id"),
    ("[dicom]\nae_title = \"THIS AE TITLE IS TOO LONG\"\n", "dicom.ae_title"),
    ("[registry]\nembedded = false\n", "repository.registry_url"),
    ("[dicom.move_destinations]\nVIEWER = \"nohostport\"\n", "dicom.move_destinations.VIEWER"),
])
def test_invalid_file_names_the_key(tmp_path, text, key):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(config, environ={})


def test_invalid_environment_value_names_the_variable():
    with pytest.raises(ConfigError, match="XDSI_SERVER_PORT"):
        load(None, environ={"XDSI_SERVER_PORT": "many"})


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "absent.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad, environ={})
