#!/usr/bin/env python3
"""Benchmark of the XDS-I manifest: KOS build + Part 10 encoding + RAD-68 metadata for a large
synthetic study; prints the times and the peak resident memory (target: under 2 s for 5,000
instances).

The study header is a realistic one built here (patient, study, equipment attributes); the
references are made up: one CT series of ``--per-series`` instances after another.

    .venv/bin/python scripts/bench_kos.py [--instances 5000] [--per-series 500] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from lxml import etree
from pydicom import Dataset
from pydicom.uid import CTImageStorage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dicom.kos import Reference, build_manifest, new_uid, write_manifest  # noqa: E402
from xds.manifest_metadata import StudyFacts, build_provide_and_register  # noqa: E402
from xds.profile import load_profile  # noqa: E402


def study_header() -> Dataset:
    header = Dataset()
    header.SpecificCharacterSet = "ISO_IR 192"
    header.PatientName = "Müller^Anna^Maria^^"
    header.PatientID = "MRN0012345"
    header.PatientBirthDate = "19650412"
    header.PatientSex = "F"
    header.StudyInstanceUID = new_uid()
    header.StudyDate = "20240105"
    header.StudyTime = "101500.000000"
    header.ReferringPhysicianName = "Welby^Marcus"
    header.StudyID = "S1"
    header.AccessionNumber = "ACC20240105001"
    header.StudyDescription = "CT CHEST ABDOMEN PELVIS"
    header.Modality = "CT"
    header.BodyPartExamined = "CHEST"
    return header


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=5000)
    parser.add_argument("--per-series", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", default="default")
    args = parser.parse_args(argv)

    header = study_header()
    series = [new_uid() for _ in range(0, args.instances, args.per_series)]
    references = [
        Reference(series[i // args.per_series], CTImageStorage, new_uid(), modality="CT")
        for i in range(args.instances)
    ]
    profile = load_profile(args.profile)
    facts = StudyFacts.from_headers([header])

    best = None
    for _ in range(args.repeat):
        started = time.perf_counter()
        kos = build_manifest(header, references, retrieve_ae_title="XDSI",
                             retrieve_location_uid="1.3.6.1.4.1.21367.13.40.301",
                             retrieve_url_base="http://127.0.0.1:8080/wado-rs",
                             now=datetime.now(UTC))
        built = time.perf_counter()
        buffer = io.BytesIO()
        write_manifest(kos, buffer)
        encoded = time.perf_counter()
        request = build_provide_and_register(kos, profile=profile, study_facts=facts)
        metadata = etree.tostring(request)
        done = time.perf_counter()
        run = (built - started, encoded - built, done - encoded, done - started)
        best = run if best is None or run[3] < best[3] else best

    assert best is not None
    build_s, encode_s, metadata_s, total_s = best
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"instances          {args.instances} in {len(series)} series")
    print(f"KOS size           {len(buffer.getvalue()) / 1e6:.2f} MB; metadata "
          f"{len(metadata) / 1e3:.1f} kB")
    print(f"build              {build_s * 1000:.0f} ms")
    print(f"encode (Part 10)   {encode_s * 1000:.0f} ms")
    print(f"metadata           {metadata_s * 1000:.0f} ms")
    print(f"total (best of {args.repeat})  {total_s * 1000:.0f} ms   target < 2000 ms")
    print(f"peak RSS           {peak_mib:.0f} MiB")
    return 0 if total_s < 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
