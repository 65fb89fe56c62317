"""The affinity-domain profile: codes, OIDs and patient-ID rules an Imaging Document Source uses.

An XDS affinity domain fixes the coded values its registry accepts (classCode, typeCode,
confidentialityCode, ...), the patient identity domain of ``patientId`` and the OIDs that
qualify local identifiers. They are data, not code: a TOML file, either shipped in
``xds/profiles/<name>.toml`` or anywhere on disk. ``xds/profiles/example.toml`` documents every
key.

References
----------
IHE ITI TF-3 4.2.3.1 (coded values, CX), 4.2.3.2 (DocumentEntry); RAD TF-3 4.68.4.1.2.3.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from xds import ebrim

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
OID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


class ProfileError(ValueError):
    """An invalid affinity-domain profile; the message names the file and the key."""


class PatientIdMappingError(ValueError):
    """The profile has no rule that maps this local Patient ID to the affinity domain."""


@dataclass(frozen=True)
class Code:
    """A coded value as XDS sends it: ``nodeRepresentation``, ``codingScheme``, display name."""

    code: str
    scheme: str
    display: str


# The XDS-I manifest formatCode is fixed by RAD TF-3 4.68.4.1.2.3.2: the KOS SOP Class UID.
KOS_FORMAT_CODE = Code(
    ebrim.KOS_SOP_CLASS_UID, ebrim.DICOM_UID_REGISTRY_OID, "Key Object Selection Document"
)


@dataclass(frozen=True)
class Author:
    """XDS author (ITI TF-3 4.2.3.1.4): XON institutions, an XCN person, roles, specialties."""

    institution: tuple[str, ...] = ()
    person: str | None = None
    role: tuple[str, ...] = ()
    specialty: tuple[str, ...] = ()


@dataclass(frozen=True)
class PatientIdRule:
    """How a local (departmental) Patient ID becomes the affinity-domain ``patientId``.

    ``table`` is looked up first (exact local ID); then ``pattern`` (a regular expression that
    must match the whole local ID) with ``template`` (``str.format`` with the named groups, and
    ``{id}`` for the whole local ID).
    """

    affinity_authority: str
    local_authority: str
    pattern: re.Pattern[str] | None = None
    template: str = "{id}"
    table: dict[str, str] = field(default_factory=dict)
    issuers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AffinityDomainProfile:
    """Everything the XDS-I metadata needs that the DICOM study cannot give."""

    name: str
    source_id: str
    class_code: Code
    type_code: Code
    confidentiality_codes: tuple[Code, ...]
    healthcare_facility_type_code: Code
    practice_setting_code: Code
    content_type_code: Code
    language_code: str
    patient_id: PatientIdRule
    accession_authority: str | None = None
    format_code: Code = KOS_FORMAT_CODE
    author: Author | None = None
    title: str | None = None
    dicom_time_zone: str = "local"
    anatomic_regions: dict[str, Code] = field(default_factory=dict)

    # Identifiers -----------------------------------------------------------------------

    def affinity_patient_id(self, local_id: str) -> str:
        """The affinity-domain ``patientId`` (CX ``id^^^&OID&ISO``) for a local Patient ID.

        Raises
        ------
        PatientIdMappingError
            If neither the table nor the pattern covers ``local_id``.
        """
        rule = self.patient_id
        mapped = rule.table.get(local_id)
        if mapped is None and rule.pattern is not None:
            match = rule.pattern.fullmatch(local_id)
            if match is not None:
                mapped = rule.template.format(id=local_id, **match.groupdict())
        if not mapped:
            raise PatientIdMappingError(
                f"profile {self.name}: no patient_id rule maps this local Patient ID "
                "to the affinity domain"
            )
        return cx(mapped, rule.affinity_authority)

    def local_authority(self, issuer_of_patient_id: str | None) -> str:
        """The OID of the local assigning authority: the DICOM issuer when it is an OID or is
        named in ``patient_id.issuers``, else the configured departmental authority."""
        rule = self.patient_id
        if issuer_of_patient_id:
            if OID.match(issuer_of_patient_id):
                return issuer_of_patient_id
            if issuer_of_patient_id in rule.issuers:
                return rule.issuers[issuer_of_patient_id]
        return rule.local_authority

    def anatomic_region(self, body_part: str) -> Code | None:
        """The SNOMED code for a Body Part Examined value or anatomic region code, if mapped."""
        return self.anatomic_regions.get(body_part.strip().upper())


def cx(identifier: str, authority_oid: str) -> str:
    """An HL7 CX with only ID and an ISO assigning authority (ITI TF-3 4.2.3.1.7)."""
    return f"{identifier}^^^&{authority_oid}&ISO"


# Loading -------------------------------------------------------------------------------------


def load_profile(name_or_path: str | Path) -> AffinityDomainProfile:
    """Load a profile by shipped name (``default``, ``nist-ids``) or from a TOML file.

    Raises
    ------
    ProfileError
        If the file is missing, is not TOML, or a key is missing, unknown or invalid.
    """
    text = str(name_or_path)
    is_name = "/" not in text and "\\" not in text and not text.endswith(".toml")
    path = PROFILES_DIR / f"{text}.toml" if is_name else Path(text)
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except FileNotFoundError:
        shipped = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.toml")))
        raise ProfileError(
            f"affinity-domain profile {text!r} not found (shipped: {shipped})"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"profile {path}: not valid TOML: {exc}") from exc

    return _Reader(path.stem, document).profile()


class _Reader:
    """Reads and checks one TOML document, naming the offending key in every error."""

    TOP_KEYS = frozenset({
        "source_id", "language_code", "title", "dicom_time_zone", "accession_authority",
        "codes", "author", "patient_id", "anatomic_regions",
    })
    CODE_KEYS = frozenset({
        "class_code", "type_code", "format_code", "confidentiality_code",
        "healthcare_facility_type_code", "practice_setting_code", "content_type_code",
    })

    def __init__(self, name: str, document: dict[str, Any]):
        self.name = name
        self.document = document

    def fail(self, key: str, reason: str) -> ProfileError:
        return ProfileError(f"profile {self.name}: {key}: {reason}")

    def profile(self) -> AffinityDomainProfile:
        doc = self.document
        self.unknown(doc, self.TOP_KEYS, "")
        codes = self.table(doc, "codes", required=True)
        self.unknown(codes, self.CODE_KEYS, "codes.")

        format_code = KOS_FORMAT_CODE
        if "format_code" in codes:
            format_code = self.code(codes["format_code"], "codes.format_code")
            if (format_code.code, format_code.scheme) != (KOS_FORMAT_CODE.code,
                                                          KOS_FORMAT_CODE.scheme):
                raise self.fail("codes.format_code", "an XDS-I manifest's formatCode is "
                                f"{KOS_FORMAT_CODE.code} in scheme {KOS_FORMAT_CODE.scheme}")

        confidentiality = codes.get("confidentiality_code")
        if isinstance(confidentiality, dict):
            confidentiality = [confidentiality]
        if not isinstance(confidentiality, list) or not confidentiality:
            raise self.fail("codes.confidentiality_code", "at least one code is required")

        return AffinityDomainProfile(
            name=self.name,
            source_id=self.oid(doc, "source_id"),
            class_code=self.code(codes.get("class_code"), "codes.class_code"),
            type_code=self.code(codes.get("type_code"), "codes.type_code"),
            confidentiality_codes=tuple(
                self.code(c, f"codes.confidentiality_code[{i}]")
                for i, c in enumerate(confidentiality)
            ),
            healthcare_facility_type_code=self.code(
                codes.get("healthcare_facility_type_code"), "codes.healthcare_facility_type_code"
            ),
            practice_setting_code=self.code(
                codes.get("practice_setting_code"), "codes.practice_setting_code"
            ),
            content_type_code=self.code(codes.get("content_type_code"), "codes.content_type_code"),
            language_code=self.string(doc, "language_code", default="en-US"),
            patient_id=self.patient_id_rule(),
            accession_authority=self.oid(doc, "accession_authority", required=False),
            format_code=format_code,
            author=self.author(),
            title=self.string(doc, "title", default=None),
            dicom_time_zone=self.time_zone(),
            anatomic_regions=self.anatomic_regions(),
        )

    # Pieces ----------------------------------------------------------------------------

    def unknown(self, table: dict, allowed: frozenset[str] | set[str], prefix: str) -> None:
        for key in table:
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                raise self.fail(f"{prefix}{key}", f"unknown key (allowed: {known})")

    def table(self, parent: dict, key: str, required: bool = False, prefix: str = "") -> dict:
        value = parent.get(key)
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            raise self.fail(prefix + key, "a table is required")
        return value

    def string(self, table: dict, key: str, default: Any = ..., prefix: str = "") -> Any:
        value = table.get(key, default)
        if value is ...:
            raise self.fail(prefix + key, "is required")
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise self.fail(prefix + key, "must be a non-empty string")
        return value

    def oid(self, table: dict, key: str, required: bool = True, prefix: str = "") -> Any:
        value = self.string(table, key, default=... if required else None, prefix=prefix)
        if value is not None and (not OID.match(value) or len(value) > 64):
            raise self.fail(prefix + key, f"{value!r} is not an OID of at most 64 characters")
        return value

    def code(self, value: Any, key: str) -> Code:
        if value is None:
            raise self.fail(key, "is required")
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table with code, scheme and display")
        self.unknown(value, {"code", "scheme", "display"}, f"{key}.")
        return Code(
            code=self.string(value, "code", prefix=f"{key}."),
            scheme=self.string(value, "scheme", prefix=f"{key}."),
            display=self.string(value, "display", prefix=f"{key}."),
        )

    def strings(self, table: dict, key: str, prefix: str) -> tuple[str, ...]:
        value = table.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(prefix + key, "must be a string or a list of strings")
        return tuple(value)

    def author(self) -> Author | None:
        table = self.table(self.document, "author")
        if not table:
            return None
        self.unknown(table, {"institution", "person", "role", "specialty"}, "author.")
        author = Author(
            institution=self.strings(table, "institution", "author."),
            person=self.string(table, "person", default=None, prefix="author."),
            role=self.strings(table, "role", "author."),
            specialty=self.strings(table, "specialty", "author."),
        )
        if not author.institution and not author.person:
            raise self.fail("author", "needs an institution or a person (ITI TF-3 4.2.3.1.4)")
        return author

    def patient_id_rule(self) -> PatientIdRule:
        table = self.table(self.document, "patient_id", required=True)
        prefix = "patient_id."
        self.unknown(table, {"affinity_authority", "local_authority", "pattern", "template",
                             "table", "issuers"}, prefix)

        pattern = None
        if "pattern" in table:
            try:
                pattern = re.compile(self.string(table, "pattern", prefix=prefix))
            except re.error as exc:
                raise self.fail(prefix + "pattern", f"not a regular expression: {exc}") from exc
        template = self.string(table, "template", default="{id}", prefix=prefix)
        groups = set(pattern.groupindex) if pattern else set()
        for field_name in re.findall(r"{(\w*)", template):
            if field_name != "id" and field_name not in groups:
                raise self.fail(prefix + "template",
                                f"{{{field_name}}} is not a named group of patient_id.pattern")

        mapping = self.table(table, "table", prefix=prefix)
        issuers = self.table(table, "issuers", prefix=prefix)
        for local, mapped in mapping.items():
            if not isinstance(mapped, str) or not mapped:
                raise self.fail(f"{prefix}table.{local}", "must be a non-empty string")
        for issuer in issuers:
            self.oid(issuers, issuer, prefix=f"{prefix}issuers.")
        if pattern is None and not mapping:
            raise self.fail(prefix + "pattern", "a pattern or a table is required")

        return PatientIdRule(
            affinity_authority=self.oid(table, "affinity_authority", prefix=prefix),
            local_authority=self.oid(table, "local_authority", prefix=prefix),
            pattern=pattern,
            template=template,
            table=dict(mapping),
            issuers=dict(issuers),
        )

    def time_zone(self) -> str:
        value = self.string(self.document, "dicom_time_zone", default="local")
        if value != "local":
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise self.fail("dicom_time_zone",
                                f"{value!r} is not 'local' or an IANA time zone") from exc
        return value

    def anatomic_regions(self) -> dict[str, Code]:
        table = self.table(self.document, "anatomic_regions")
        return {
            key.strip().upper(): self.code(value, f"anatomic_regions.{key}")
            for key, value in table.items()
        }
