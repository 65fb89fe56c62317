#!/usr/bin/env python3
"""The main job, end to end, on real images.

Starts ``xdsi serve`` in a scratch folder on 127.0.0.1, sends each study with dcmtk's
``storescu``, publishes it (``xdsi publish``), finds its manifest in the registry (ITI-18
FindDocuments), retrieves the manifest (ITI-43) and one image (RAD-69), and prints what it found.

By default the studies are the CT and MR test images that ship inside the pydicom package;
give folders or files to use your own.

    .venv/bin/python scripts/demo.py [--profile NAME] [PATH ...]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx
import pydicom
from lxml import etree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dicom.kos import manifest_summary  # noqa: E402
from soap.client import SoapClient  # noqa: E402
from xds import ebrim  # noqa: E402
from xds.profile import load_profile  # noqa: E402

PYDICOM_SAMPLES = ("CT_small.dcm", "MR_small.dcm")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_inputs() -> list[Path]:
    """The real CT and MR images bundled with pydicom (read in place, never downloaded)."""
    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    return [folder / name for name in PYDICOM_SAMPLES]


# storescu's option that proposes a compressed transfer syntax (and the uncompressed ones), so
# that each file goes out as it is stored. Uncompressed files need none.
STORESCU_OPTIONS = {
    "1.2.840.10008.1.2.4.70": "-xs", "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.4.91": "-xw", "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu", "1.2.840.10008.1.2.5": "-xr", "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.100": "-xm", "1.2.840.10008.1.2.4.101": "-xh", "1.2.840.10008.1.2.4.102": "-xn",
    "1.2.840.10008.1.2.4.103": "-xl", "1.2.840.10008.1.2.4.104": "-x2", "1.2.840.10008.1.2.4.105": "-x3",
    "1.2.840.10008.1.2.4.106": "-xo", "1.2.840.10008.1.2.4.107": "-x4", "1.2.840.10008.1.2.4.108": "-x5",
}
UNCOMPRESSED = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")


def dicom_files(paths: list[Path]) -> dict[str, dict[str, list[Path]]]:
    """Study Instance UID -> transfer syntax UID -> files, for every Part 10 file under ``paths``."""
    studies: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    skipped = 0
    for path in paths:
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for candidate in candidates:
            try:
                header = pydicom.dcmread(candidate, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
                syntax = str(header.file_meta.TransferSyntaxUID)
            except Exception:
                skipped += 1  # not DICOM, or no File Meta Information (storescu needs one)
                continue
            if "StudyInstanceUID" in header:
                studies[str(header.StudyInstanceUID)][syntax].append(candidate)
            else:
                skipped += 1
    if skipped:
        print(f"skipped {skipped} file(s) that are not DICOM Part 10 files with a study")
    return studies


def send(files_by_syntax: dict[str, list[Path]], port: int, env: dict) -> int:
    """Send a study's files with storescu, each in its own transfer syntax. Returns how many
    were stored; files storescu cannot offer or send are reported and left out."""
    sent = 0
    for syntax, files in files_by_syntax.items():
        if syntax in UNCOMPRESSED:
            options = []
        elif syntax in STORESCU_OPTIONS:
            options = [STORESCU_OPTIONS[syntax]]
        else:
            print(f"  skipped {len(files)} file(s) in transfer syntax {syntax}: storescu cannot offer it "
                  f"(archive them with 'xdsi import')")
            continue
        # -nh: carry on after a refused file; -v: a line per answer, refusals included.
        result = subprocess.run(["storescu", "-nh", "-v", *options, "-aet", "DEMO", "-aec", "XDSI", "127.0.0.1",
                                 str(port), *map(str, files)], env=dict(env, TCP_NODELAY="1"),
                                capture_output=True, text=True)
        answers = [line for line in (result.stdout + result.stderr).splitlines()
                   if "Received Store Response" in line]
        stored = sum("(Success" in line or "(Warning" in line for line in answers)
        if result.returncode != 0 and not answers:
            raise SystemExit(f"storescu failed: {result.stderr.strip() or result.returncode}")
        for line in answers:
            if "(Success" not in line and "(Warning" not in line:
                print(f"  storescu: {line.split(': ', 1)[-1]}")
        for line in result.stderr.splitlines():
            if line.startswith("E: "):
                print(f"  storescu: {line[3:]}")
        sent += stored
    return sent


def xdsi(*args: str, env: dict, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xds.cli", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, check=check)


def wait_for(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"xdsi serve exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("xdsi serve did not become ready")


def find_documents(patient_id: str) -> etree._Element:
    request = etree.fromstring(
        f'<query:AdhocQueryRequest xmlns:query="{ebrim.QUERY}" xmlns:rim="{ebrim.RIM}">'
        '<query:ResponseOption returnType="LeafClass" returnComposedObjects="true"/>'
        f'<rim:AdhocQuery id="{ebrim.FIND_DOCUMENTS}">'
        f'<rim:Slot name="$XDSDocumentEntryPatientId"><rim:ValueList><rim:Value></rim:Value></rim:ValueList></rim:Slot>'
        '<rim:Slot name="$XDSDocumentEntryStatus"><rim:ValueList>'
        f"<rim:Value>('{ebrim.STATUS_APPROVED}')</rim:Value></rim:ValueList></rim:Slot>"
        "</rim:AdhocQuery></query:AdhocQueryRequest>".encode())
    request.find(f".//{ebrim.q('rim', 'Value')}").text = f"'{patient_id}'"
    return request


def retrieve_documents(repository_unique_id: str, unique_id: str) -> etree._Element:
    request = etree.Element(ebrim.q("xds", "RetrieveDocumentSetRequest"), nsmap={"xds": ebrim.XDS})
    document = etree.SubElement(request, ebrim.q("xds", "DocumentRequest"))
    etree.SubElement(document, ebrim.q("xds", "RepositoryUniqueId")).text = repository_unique_id
    etree.SubElement(document, ebrim.q("xds", "DocumentUniqueId")).text = unique_id
    return request


def retrieve_image(source_unique_id: str, study: str, series: str, instance: str) -> etree._Element:
    request = etree.Element(ebrim.q("xdsi", "RetrieveImagingDocumentSetRequest"),
                            nsmap={"xdsi": ebrim.XDSI, "xds": ebrim.XDS})
    study_request = etree.SubElement(request, ebrim.q("xdsi", "StudyRequest"), studyInstanceUID=study)
    series_request = etree.SubElement(study_request, ebrim.q("xdsi", "SeriesRequest"), seriesInstanceUID=series)
    document = etree.SubElement(series_request, ebrim.q("xds", "DocumentRequest"))
    etree.SubElement(document, ebrim.q("xds", "RepositoryUniqueId")).text = source_unique_id
    etree.SubElement(document, ebrim.q("xds", "DocumentUniqueId")).text = instance
    syntaxes = etree.SubElement(request, ebrim.q("xdsi", "TransferSyntaxUIDList"))
    etree.SubElement(syntaxes, ebrim.q("xdsi", "TransferSyntaxUID")).text = "1.2.840.10008.1.2.1"
    return request


def response_documents(reply) -> list[tuple[str, bytes]]:
    """(DocumentUniqueId, bytes) of an ITI-43 / RAD-69 response read by the project's client."""
    body = reply.envelope_root.find("{http://www.w3.org/2003/05/soap-envelope}Body")[0]
    status = body.find(ebrim.q("rs", "RegistryResponse")).get("status")
    if status != ebrim.SUCCESS:
        raise SystemExit(f"retrieve failed: {etree.tostring(body)[:2000]!r}")
    documents = []
    for response in body.findall(ebrim.q("xds", "DocumentResponse")):
        include = response.find(f"{ebrim.q('xds', 'Document')}/{{{ebrim.XOP}}}Include")
        from urllib.parse import unquote

        attachment = reply.attachments[unquote(include.get("href")[4:])]
        documents.append((response.findtext(ebrim.q("xds", "DocumentUniqueId")), Path(attachment.path).read_bytes()))
    return documents


async def consume(base: str, settings: dict, published: dict[str, str], profile) -> list[str]:
    """Act as an XDS-I consumer: ITI-18, ITI-43, RAD-69. Returns the summary lines."""
    client = SoapClient(timeout=60)
    lines = []
    for study_uid, local_patient_id in published.items():
        patient_id = profile.affinity_patient_id(local_patient_id)
        reply = await client.call(f"{base}/xds/registry", ebrim.ITI18_ACTION, find_documents(patient_id))
        entries = [e for e in reply.envelope_root.iter(ebrim.q("rim", "ExtrinsicObject"))]
        found = {}
        for entry in entries:
            for identifier in entry.findall(ebrim.q("rim", "ExternalIdentifier")):
                if identifier.get("identificationScheme") == ebrim.DE_UNIQUE_ID:
                    found[identifier.get("value")] = entry
        lines.append(f"ITI-18 FindDocuments for the study's patient: {len(found)} approved manifest(s)")

        for unique_id in found:
            reply = await client.call(f"{base}/xds/repository", ebrim.ITI43_ACTION,
                                      retrieve_documents(settings["repository"], unique_id), mtom=True)
            (_, data), = response_documents(reply)
            kos = pydicom.dcmread(io.BytesIO(data))
            if str(kos.StudyInstanceUID) != study_uid:
                continue
            summary = manifest_summary(kos)
            series = summary["series"]
            count = sum(len(instances) for instances in series.values())
            lines.append(f"ITI-43 manifest {unique_id}: {len(data)} bytes, study {summary['study_instance_uid']}, "
                         f"{len(series)} series, {count} instance(s)")
            for series_uid, instances in series.items():
                lines.append(f"    series {series_uid}: {len(instances)} instance(s), "
                             f"retrieve AE {summary.get('retrieve_ae_title')}, "
                             f"location {summary.get('retrieve_location_uid')}")

            series_uid, instances = next(iter(series.items()))
            reply = await client.call(f"{base}/xdsi/imaging-source", ebrim.RAD69_ACTION,
                                      retrieve_image(settings["source"], study_uid, series_uid, instances[0]),
                                      mtom=True)
            (instance_uid, image), = response_documents(reply)
            ds = pydicom.dcmread(io.BytesIO(image))
            size = f"{ds.Rows}x{ds.Columns}, " if "Rows" in ds and "Columns" in ds else ""
            lines.append(f"RAD-69 image {instance_uid}: {len(image)} bytes, {ds.Modality}, {size}"
                         f"transfer syntax {ds.file_meta.TransferSyntaxUID}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description="Archive, publish, register and retrieve real studies.")
    parser.add_argument("paths", nargs="*", type=Path, help="DICOM files or folders (default: pydicom's CT and MR)")
    parser.add_argument("--profile", default="default", help="affinity-domain profile (default: default)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()

    if shutil.which("storescu") is None:
        raise SystemExit("dcmtk's storescu is needed: run scripts/setup.sh")
    studies = dicom_files(args.paths or default_inputs())
    if not studies:
        raise SystemExit("no DICOM files found")

    scratch = Path(tempfile.mkdtemp(prefix="xdsi-demo-"))
    http_port, dicom_port = free_port(), free_port()
    env = dict(os.environ, XDSI_STORAGE_DATA_DIR=str(scratch / "data"), XDSI_SERVER_PORT=str(http_port),
               XDSI_DICOM_PORT=str(dicom_port), XDSI_SOURCE_PROFILE=args.profile)
    env.pop("XDSI_CONFIG", None)
    base = f"http://127.0.0.1:{http_port}"
    settings = {"repository": "1.3.6.1.4.1.21367.13.40.300", "source": "1.3.6.1.4.1.21367.13.40.301"}

    log_path = scratch / "serve.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "xds.cli", "serve"], cwd=scratch, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(f"{base}/health", server, log_path)
        print(f"xdsi serve running: HTTP {base}, DICOM XDSI@127.0.0.1:{dicom_port} (data in {scratch}"
              f"{'' if args.keep else ', removed at the end; --keep keeps it'})")

        published: dict[str, str] = {}
        for study_uid, files_by_syntax in studies.items():
            files = [path for paths in files_by_syntax.values() for path in paths]
            sent = send(files_by_syntax, dicom_port, env)
            print(f"storescu: sent {sent} of {len(files)} instance(s) of study {study_uid}")
            if not sent:
                continue

            result = xdsi("publish", study_uid, env=env, cwd=scratch, check=False)
            print(f"xdsi publish: {result.stdout.strip().splitlines()[-1] if result.stdout else result.stderr}")
            if result.returncode != 0:
                raise SystemExit(f"publishing failed:\n{result.stdout}{result.stderr}")
            header = pydicom.dcmread(files[0], stop_before_pixels=True)
            published[study_uid] = str(header.get("PatientID", ""))

        lines = asyncio.run(consume(base, settings, published, load_profile(args.profile)))
        print("\nWhat a consumer finds:")
        for line in lines:
            print("  " + line)
    finally:
        server.terminate()
        server.wait(20)
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
