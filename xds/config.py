"""Configuration: defaults, then a TOML file, then environment variables.

Every setting has the name ``section.key``; the environment variable that overrides it is
``XDSI_SECTION_KEY`` (for example ``XDSI_SERVER_PORT=9090``). Unknown keys and values of the
wrong type stop the start with a message naming the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

OID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
AE_TITLE = re.compile(r"^[\x21-\x5b\x5d-\x7e]([\x20-\x5b\x5d-\x7e]{0,14})$")


class ConfigError(ValueError):
    """An invalid setting; the message names the key."""


@dataclass
class Server:
    host: str = "127.0.0.1"
    port: int = 8080
    # The base URL consumers use to reach this service (Retrieve URL in manifests, wsa:To).
    public_url: str = ""


@dataclass
class Storage:
    data_dir: str = "data"
    # Default: SQLite in data_dir. PostgreSQL: postgresql+psycopg://user@host:port/db
    database_url: str = ""
    blob_dir: str = ""


@dataclass
class Repository:
    # repositoryUniqueId of the Document Repository (an OID of at most 64 characters).
    unique_id: str = "1.3.6.1.4.1.21367.13.40.300"
    # Where ITI-42 goes. Empty: the embedded registry, called in-process.
    registry_url: str = ""
    registry_timeout_seconds: float = 30.0
    max_documents_per_request: int = 1000


@dataclass
class Registry:
    # The embedded Document Registry (standalone use, demo, tests). Never for production.
    embedded: bool = True


@dataclass
class Dicom:
    enabled: bool = True
    ae_title: str = "XDSI"
    host: str = "127.0.0.1"
    port: int = 11112
    # C-MOVE destinations: AE title -> "host:port".
    move_destinations: dict = field(default_factory=dict)


@dataclass
class Source:
    # repositoryUniqueId of the Imaging Document Source: RAD-69 answers for it, and it is the
    # Retrieve Location UID in every manifest.
    unique_id: str = "1.3.6.1.4.1.21367.13.40.301"
    # Affinity-domain profile: a name shipped in xds/profiles/ or a path to a TOML file.
    profile: str = "default"
    # Empty: the co-located repository, in-process. Otherwise the URL of an external
    # Document Repository, reached by RAD-68 over SOAP 1.2 / MTOM.
    repository_url: str = ""
    # Publish a study automatically once no instance has arrived for this long; 0 = never.
    publish_delay_seconds: float = 0.0
    home_community_id: str = ""


@dataclass
class Settings:
    server: Server = field(default_factory=Server)
    storage: Storage = field(default_factory=Storage)
    repository: Repository = field(default_factory=Repository)
    registry: Registry = field(default_factory=Registry)
    dicom: Dicom = field(default_factory=Dicom)
    source: Source = field(default_factory=Source)

    # Derived locations ------------------------------------------------------------------

    @property
    def data_path(self) -> Path:
        return Path(self.storage.data_dir).resolve()

    @property
    def database_url(self) -> str:
        return self.storage.database_url or f"sqlite:///{self.data_path / 'xdsi.db'}"

    @property
    def blob_path(self) -> Path:
        return Path(self.storage.blob_dir).resolve() if self.storage.blob_dir else self.data_path

    @property
    def base_url(self) -> str:
        return (self.server.public_url or f"http://{self.server.host}:{self.server.port}").rstrip("/")


def load(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, overridden by the TOML file at ``path`` (if any), then by ``XDSI_*`` variables."""
    settings = Settings()

    if path is not None:
        try:
            with open(path, "rb") as f:
                document = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        except OSError as exc:  # a folder, a file we may not read
            raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
        _apply_file(settings, document)

    _apply_environment(settings, os.environ if environ is None else environ)
    _validate(settings)
    return settings


def _apply_file(settings: Settings, document: dict[str, Any]) -> None:
    for section_name, values in document.items():
        section = _section(settings, section_name)
        if not isinstance(values, dict):
            raise ConfigError(f"{section_name}: expected a table of settings")
        for key, value in values.items():
            _set(section, section_name, key, value)


def _apply_environment(settings: Settings, environ: Mapping[str, str]) -> None:
    for name, raw in environ.items():
        if not name.startswith("XDSI_") or name.startswith("XDSI_TEST_"):
            continue
        rest = name[len("XDSI_"):].lower()
        section_name, _, key = rest.partition("_")
        if section_name == "config":
            continue
        section = _section(settings, section_name, origin=name)
        _set(section, section_name, key, _parse_env_value(section, section_name, key, raw, name))


def _section(settings: Settings, name: str, origin: str | None = None):
    known = {f.name for f in fields(Settings)}
    if name not in known:
        where = f" (from {origin})" if origin else ""
        raise ConfigError(f"unknown config section {name!r}{where}; known: {', '.join(sorted(known))}")
    return getattr(settings, name)


def _set(section, section_name: str, key: str, value: Any) -> None:
    types = {f.name: f.type for f in fields(section)}
    if key not in types:
        raise ConfigError(f"unknown setting {section_name}.{key}")
    expected = types[key]
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "dict": isinstance(value, dict),
    }[expected]
    if not ok:
        raise ConfigError(f"{section_name}.{key}: expected {expected}, got {value!r}")
    setattr(section, key, float(value) if expected == "float" else value)


def _parse_env_value(section, section_name: str, key: str, raw: str, name: str) -> Any:
    types = {f.name: f.type for f in fields(section)}
    if key not in types:
        raise ConfigError(f"unknown setting {section_name}.{key} (from {name})")
    expected = types[key]
    try:
        if expected == "int":
            return int(raw)
        if expected == "float":
            return float(raw)
        if expected == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if expected == "dict":
            return dict(item.split("=", 1) for item in raw.split(",") if item)
    except ValueError:
        raise ConfigError(f"{section_name}.{key} (from {name}): expected {expected}, got {raw!r}") from None
    return raw


def _validate(settings: Settings) -> None:
    if not 0 < settings.server.port < 65536:
        raise ConfigError(f"server.port: {settings.server.port} is not a TCP port")
    if not 0 < settings.dicom.port < 65536:
        raise ConfigError(f"dicom.port: {settings.dicom.port} is not a TCP port")
    for name, value in (("repository.unique_id", settings.repository.unique_id),
                        ("source.unique_id", settings.source.unique_id)):
        if not OID.match(value) or len(value) > 64:
            raise ConfigError(f"{name}: {value!r} is not an OID of at most 64 characters")
    wildcard = ("", "0.0.0.0", "::")
    if (settings.dicom.enabled and settings.dicom.port == settings.server.port
            and (settings.dicom.host == settings.server.host
                 or wildcard.count(settings.dicom.host) + wildcard.count(settings.server.host))):
        raise ConfigError(f"dicom.port: {settings.dicom.port} is server.port too")
    if not AE_TITLE.match(settings.dicom.ae_title):
        raise ConfigError(f"dicom.ae_title: {settings.dicom.ae_title!r} is not a valid AE title")
    for ae, address in settings.dicom.move_destinations.items():
        host, _, port = str(address).rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"dicom.move_destinations.{ae}: expected 'host:port', got {address!r}")
    if settings.repository.max_documents_per_request < 1:
        raise ConfigError("repository.max_documents_per_request: must be at least 1")
    url = settings.storage.database_url
    if url and not url.startswith(("sqlite:", "sqlite+", "postgresql:", "postgresql+")):
        raise ConfigError(f"storage.database_url: {url.split(':', 1)[0]!r} databases are not "
                          f"supported; use sqlite:///FILE or postgresql+psycopg://...")
    if not settings.registry.embedded and not settings.repository.registry_url:
        raise ConfigError("repository.registry_url: required when registry.embedded is false")
