"""Affinity-domain profiles (xds/profile.py): shipped profiles, patient-ID mapping, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from xds.profile import (
    KOS_FORMAT_CODE,
    PROFILES_DIR,
    Code,
    PatientIdMappingError,
    ProfileError,
    load_profile,
)

NIST_AFFINITY_AUTHORITY = "1.3.6.1.4.1.21367.2005.13.20.1000"


@pytest.mark.parametrize("name", ["default", "nist-ids", str(PROFILES_DIR / "example.toml")])
def test_profile_shipped_profiles_load(name: str) -> None:
    profile = load_profile(name)

    assert profile.format_code == KOS_FORMAT_CODE
    assert profile.confidentiality_codes
    assert profile.source_id


def test_profile_nist_ids_has_the_nist_test_configuration() -> None:
    profile = load_profile("nist-ids")

    assert profile.class_code == Code("IMAGES", "1.3.6.1.4.1.19376.1.2.6.1", "Images")
    assert profile.confidentiality_codes == (Code("R", "2.16.840.1.113883.5.25", "restricted"),)
    assert profile.healthcare_facility_type_code.code == "35971002"
    assert profile.practice_setting_code == Code("Practice-A", "1.3.6.1.4.1.21367.2017.3",
                                                 "Radiology")
    assert profile.accession_authority == "1.3.6.1.4.1.21367.13.202.2000"
    assert profile.dicom_time_zone == "UTC"


@pytest.mark.parametrize("local, affinity", [
    ("IDS-DEPT002-a", "IDS-AD002-a"),
    ("IDS-DEPT099-a", "IDS-AD099-a"),
    ("C3L-00277", "IDS_2018-4801a"),
    ("C3N-00953", "IDS_2018-4801b"),
    ("TCGA-G4-6304", "IDS_2018-4801c"),
])
def test_profile_nist_ids_maps_local_patient_ids(local: str, affinity: str) -> None:
    profile = load_profile("nist-ids")

    assert profile.affinity_patient_id(local) == f"{affinity}^^^&{NIST_AFFINITY_AUTHORITY}&ISO"


def test_profile_unmapped_patient_id_raises_without_echoing_it() -> None:
    with pytest.raises(PatientIdMappingError) as caught:
        load_profile("nist-ids").affinity_patient_id("SOMEONE-ELSE")

    assert "SOMEONE-ELSE" not in str(caught.value)


def test_profile_local_authority_prefers_the_dicom_issuer() -> None:
    profile = load_profile(PROFILES_DIR / "example.toml")

    assert profile.local_authority("2.16.840.1.999") == "2.16.840.1.999"
    assert profile.local_authority("HOSP_A") == "1.2.3.4.5.6.12"
    assert profile.local_authority("UNKNOWN") == "1.2.3.4.5.6.11"
    assert profile.local_authority(None) == "1.2.3.4.5.6.11"


def test_profile_example_table_wins_over_pattern() -> None:
    profile = load_profile(PROFILES_DIR / "example.toml")

    assert profile.affinity_patient_id("MRN0001").startswith("AD-SPECIAL-1^^^")
    assert profile.affinity_patient_id("MRN0042").startswith("AD0042^^^")


def test_profile_anatomic_region_lookup_ignores_case() -> None:
    profile = load_profile("default")

    assert profile.anatomic_region("chest") == Code("51185008", "2.16.840.1.113883.6.96", "Chest")
    assert profile.anatomic_region("ELBOWX") is None


# Invalid profiles ----------------------------------------------------------------------------


def _write_variant(tmp_path: Path, old: str, new: str) -> Path:
    text = (PROFILES_DIR / "example.toml").read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "variant.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


@pytest.mark.parametrize("old, new, key", [
    ('[codes.class_code]', '[codes.klass_code]', "codes.klass_code"),
    ('source_id = "1.2.3.4.5.6.7"', 'source_id = "not-an-oid"', "source_id"),
    ('source_id = "1.2.3.4.5.6.7"', '', "source_id"),
    ('template = "AD{number}"', 'template = "AD{nummer}"', "patient_id.template"),
    ('pattern = \'^MRN(?P<number>\\d+)$\'', 'pattern = "("', "patient_id.pattern"),
    ('affinity_authority = "1.2.3.4.5.6.10"', '', "patient_id.affinity_authority"),
    ('code = "1.2.840.10008.5.1.4.1.1.88.59"', 'code = "1.2.3"', "codes.format_code"),
    ('dicom_time_zone = "Europe/Paris"', 'dicom_time_zone = "Mars/Olympus"', "dicom_time_zone"),
    ('code = "IMAGES"', 'code = ""', "codes.class_code.code"),
    ('"HOSP_A" = "1.2.3.4.5.6.12"', '"HOSP_A" = "hospital a"', "patient_id.issuers.HOSP_A"),
    ('person = "^Doe^Jane^^^Dr"', 'persona = "x"', "author.persona"),
])
def test_profile_invalid_value_raises_profile_error_naming_key(tmp_path: Path, old: str,
                                                               new: str, key: str) -> None:
    with pytest.raises(ProfileError, match=rf"variant: {key}:"):
        load_profile(_write_variant(tmp_path, old, new))


def test_profile_unknown_name_lists_the_shipped_profiles() -> None:
    with pytest.raises(ProfileError, match="not found.*default.*nist-ids"):
        load_profile("no-such-profile")


def test_profile_that_is_not_toml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("source_id = [unclosed\n", encoding="utf-8")

    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(path)
