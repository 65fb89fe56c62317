#!/usr/bin/env python3
"""RAD-69 retrieve speed and memory on loopback, against Orthanc's WADO-RS and a static file.

Prints, for a generated 500-instance CT study (512x512, 16-bit, ~0.5 MB each):

1. RAD-69 MB/s for the whole study in one request, stored syntax requested, and the service's
   peak RSS (VmHWM of the ``xdsi serve`` process) during those retrieves; then from disk (the
   archive's files dropped from the page cache before each run: lines "b" do the same for
   Orthanc's storage and the static file);
2. the same with transcoding to JPEG Lossless SV1 (dcmcjpeg; JPEG-LS lossless when dcmtk is
   not installed, or another syntax given by --transcode);
3. Orthanc's WADO-RS retrieve of the same study (if Orthanc is installed);
4. the same bytes as one static file (python http.server, and uvicorn + Starlette FileResponse):
   the transport limit (FileResponse reads 64 KB at a time, so it is slower than the service,
   whose MTOM writer reads 1 MB; http.server is the limit that matters);
5. the service's peak RSS for a 5,000-instance study (64x64 images) retrieved in one request.

Every client is httpx streaming the answer to nowhere (bytes counted), so the client costs the
same in every line. MB/s is the stored study size over the elapsed time (also when transcoding,
where fewer bytes travel), median of --runs runs. The peak RSS of a phase is measured by
resetting the kernel's high-water mark (``/proc/PID/clear_refs``) before it.

Orthanc listens on every interface, so the run happens inside a private network namespace whose
only interface is loopback (``unshare --net``, run as root); this script re-runs itself there.

    .venv/bin/python scripts/bench_rad69.py [--count 500] [--small-count 5000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.corpus import mtom_single_part, wrap_in_envelope
from xds import ebrim

MB = 1_000_000
SOURCE = "1.3.6.1.4.1.21367.13.40.301"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
SYNTAX_NAMES = {JPEG_LS_LOSSLESS: "JPEG-LS", JPEG_LOSSLESS_SV1: "JPEG Lossless", "1.2.840.10008.1.2.5": "RLE",
                "1.2.840.10008.1.2.4.90": "JPEG 2000", "1.2.840.10008.1.2": "Implicit LE"}
PORT_OURS, PORT_STATIC, PORT_UVICORN = 18080, 18081, 18082
PORT_ORTHANC_DICOM, PORT_ORTHANC_HTTP = 14242, 18042
TIME_LIMIT = 600  # seconds
TCP_ENV = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk and Orthanc leave Nagle on otherwise


@dataclass
class Study:
    study_uid: str
    series_uid: str
    sop_uids: list[str]
    folder: Path
    size: int  # bytes of all the Part 10 files


# The studies ------------------------------------------------------------------------------------

def generate_study(folder: Path, count: int, side: int) -> Study:
    """``count`` CT instances of one series, ``side`` x ``side`` 12-bit pixels.

    The pixels are a smooth body-like disc plus a little noise, so that lossless compression
    works about as hard as on a real CT (random bytes would make it pointless)."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    rng = np.random.default_rng(69)
    y, x = np.mgrid[0:side, 0:side]
    radius = np.hypot(x - side / 2, y - side / 2) / (side / 2)
    body = np.where(radius < 0.9, 1000 + 300 * np.cos(radius * 6), 24).astype(np.int32)

    study, series = generate_uid(), generate_uid()
    sop_uids, total = [], 0
    for number in range(1, count + 1):
        pixels = np.clip(body + number % 50 + rng.integers(0, 32, body.shape), 0, 4095)
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID = "Bench^Rad69", "BENCH-69"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20240101", "120000", "BENCH69"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, number
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = side
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = pixels.astype("<u2").tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        sop_uids.append(ds.SOPInstanceUID)
        total += path.stat().st_size
    return Study(study, series, sop_uids, folder, total)


def archive_studies(data_dir: Path, studies: list[Study]) -> None:
    """Store the studies in the service's archive the way ``xdsi import`` does."""
    from dicom.importer import import_paths
    from xds.config import load
    from xds.runtime import open_archive

    settings = load(environ=service_environment(data_dir))
    archive = open_archive(settings)
    for study in studies:
        summary = import_paths([study.folder], archive)
        if summary.stored != len(study.sop_uids):
            raise SystemExit(f"import stored {summary.stored} of {len(study.sop_uids)} instances: {summary}")


def concatenate(study: Study, target: Path) -> None:
    with open(target, "wb") as out:
        for path in sorted(study.folder.iterdir()):
            with open(path, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)


# Processes --------------------------------------------------------------------------------------

def service_environment(data_dir: Path) -> dict[str, str]:
    return {"XDSI_STORAGE_DATA_DIR": str(data_dir), "XDSI_SERVER_PORT": str(PORT_OURS),
            "XDSI_DICOM_ENABLED": "false", "XDSI_SOURCE_UNIQUE_ID": SOURCE}


def wait_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args[0]} exited with {process.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on port {port}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def memory_mb(pid: int, field: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak(pid: int) -> None:
    """Set the process's VmHWM back to its current RSS (Linux: clear_refs value 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def start_service(data_dir: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, **service_environment(data_dir)}
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "xds.cli", "serve"], cwd=ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    wait_port(PORT_OURS, process)
    return process


# Downloads --------------------------------------------------------------------------------------

def rad69_request(study: Study, syntax: str) -> tuple[str, bytes]:
    """(content type, MTOM body) of a RAD-69 asking for every instance of the study."""
    documents = "".join(
        f"<xds:DocumentRequest><xds:RepositoryUniqueId>{SOURCE}</xds:RepositoryUniqueId>"
        f"<xds:DocumentUniqueId>{uid}</xds:DocumentUniqueId></xds:DocumentRequest>" for uid in study.sop_uids)
    body = (f'<xdsi:RetrieveImagingDocumentSetRequest xmlns:xdsi="{ebrim.XDSI}" xmlns:xds="{ebrim.XDS}">'
            f'<xdsi:StudyRequest studyInstanceUID="{study.study_uid}">'
            f'<xdsi:SeriesRequest seriesInstanceUID="{study.series_uid}">{documents}</xdsi:SeriesRequest>'
            f"</xdsi:StudyRequest><xdsi:TransferSyntaxUIDList><xdsi:TransferSyntaxUID>{syntax}"
            "</xdsi:TransferSyntaxUID></xdsi:TransferSyntaxUIDList></xdsi:RetrieveImagingDocumentSetRequest>")
    return mtom_single_part(wrap_in_envelope(body.encode(), ebrim.RAD69_ACTION), ebrim.RAD69_ACTION)


HEAD_LIMIT = 8 * MB  # the SOAP part of a 5,000-instance answer is about 2 MB


def download(client: httpx.Client, method: str, url: str, **kwargs) -> tuple[float, int, bytes]:
    """(seconds, bytes received, the first part of a multipart answer) of one streamed answer."""
    received, head = 0, bytearray()
    start = time.perf_counter()
    with client.stream(method, url, **kwargs) as response:
        if response.status_code != 200:
            raise SystemExit(f"{method} {url} answered {response.status_code}: {response.read()[:500]!r}")
        for chunk in response.iter_raw(1 << 20):
            received += len(chunk)
            if len(head) < HEAD_LIMIT:
                head += chunk[: HEAD_LIMIT - len(head)]
        boundary = re.search(r'boundary="?([^";]+)', response.headers.get("content-type", ""))
    elapsed = time.perf_counter() - start

    # Keep the first part only, so that the checks never look inside the instances' bytes.
    if boundary:
        delimiter = b"--" + boundary.group(1).encode("latin-1")
        first = head.find(delimiter)
        second = head.find(delimiter, first + len(delimiter)) if first >= 0 else -1
        if second >= 0:
            head = head[:second]
    return elapsed, received, bytes(head)


def check_rad69(head: bytes, study: Study, received: int, stored_syntax: bool) -> None:
    """The answer says Success and holds one DocumentResponse per instance."""
    if ebrim.SUCCESS.encode() not in head:
        errors = re.findall(rb"codeContext=\"([^\"]*)\"", head)[:3]
        raise SystemExit(f"RAD-69 did not answer Success: {errors or head[:800]!r}")
    responses = len(re.findall(rb"<(?:\w+:)?DocumentResponse[\s>]", head))
    if responses != len(study.sop_uids):
        raise SystemExit(f"RAD-69 answered {responses} DocumentResponses for {len(study.sop_uids)} instances")
    if stored_syntax and received < study.size:
        raise SystemExit(f"RAD-69 sent {received} bytes for a {study.size}-byte study")


def drop_cache(folder: Path) -> None:
    """Ask the kernel to forget the cached pages of every file under ``folder``, so that the
    next read comes from the disk (only these files; nothing else on the machine is touched)."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def bench_rad69(client: httpx.Client, study: Study, syntax: str, runs: int,
                cold: Path | None = None) -> tuple[list[float], int]:
    """MB/s of the stored study size, per run, and the bytes of the last answer. ``cold``: the
    folder whose cached pages are dropped before each run."""
    content_type, body = rad69_request(study, syntax)
    rates, received = [], 0
    for _ in range(runs):
        if cold is not None:
            drop_cache(cold)
        elapsed, received, head = download(client, "POST", f"http://127.0.0.1:{PORT_OURS}/xdsi/imaging-source",
                                           content=body, headers={"Content-Type": content_type})
        check_rad69(head, study, received, stored_syntax=syntax == EXPLICIT_LE)
        rates.append(study.size / MB / elapsed)
    return rates, received


def bench_get(client: httpx.Client, url: str, size: int, runs: int, headers: dict | None = None,
              cold: Path | None = None) -> list[float]:
    rates = []
    for _ in range(runs):
        if cold is not None:
            drop_cache(cold)
        elapsed, received, _ = download(client, "GET", url, headers=headers or {})
        if received < size:
            raise SystemExit(f"GET {url} sent {received} bytes, expected at least {size}")
        rates.append(size / MB / elapsed)
    return rates


def rates_text(rates: list[float]) -> str:
    return f"{statistics.median(rates):6.0f} MB/s (runs: {', '.join(f'{r:.0f}' for r in rates)})"


# Orthanc ----------------------------------------------------------------------------------------

def bench_orthanc(scratch: Path, client: httpx.Client, study: Study, runs: int) -> None:
    binary = shutil.which("Orthanc")
    plugin = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
    if binary is None or not plugin.exists() or shutil.which("storescu") is None:
        print("3. Orthanc WADO-RS: skipped (needs Debian packages orthanc, orthanc-dicomweb, dcmtk)")
        return
    storage = scratch / "orthanc"
    config = {"Name": "BENCH", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
              "StorageCompression": False, "DicomServerEnabled": True, "DicomAet": "ORTHANC",
              "DicomPort": PORT_ORTHANC_DICOM, "DicomThreadsCount": 4, "HttpServerEnabled": True,
              "HttpPort": PORT_ORTHANC_HTTP, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
              "SaveJobs": False, "Plugins": [str(plugin)],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Host": "127.0.0.1",
                           "Ssl": False}}
    (scratch / "orthanc.json").write_text(json.dumps(config))
    orthanc = subprocess.Popen([binary, str(scratch / "orthanc.json")], env=TCP_ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(PORT_ORTHANC_HTTP, orthanc)
        wait_port(PORT_ORTHANC_DICOM, orthanc)
        subprocess.run(["storescu", "-aet", "BENCH", "-aec", "ORTHANC", "127.0.0.1", str(PORT_ORTHANC_DICOM),
                        "+sd", str(study.folder)], env=TCP_ENV, check=True, capture_output=True)
        before = memory_mb(orthanc.pid, "VmRSS")
        reset_peak(orthanc.pid)
        rates = bench_get(client, f"http://127.0.0.1:{PORT_ORTHANC_HTTP}/dicom-web/studies/{study.study_uid}",
                          study.size, runs, headers={"Accept": 'multipart/related; type="application/dicom"'})
        print(f"3. Orthanc WADO-RS whole study:     {rates_text(rates)}; Orthanc RSS {before:.0f} MB before, "
              f"peak {memory_mb(orthanc.pid):.0f} MB", flush=True)
        rates = bench_get(client, f"http://127.0.0.1:{PORT_ORTHANC_HTTP}/dicom-web/studies/{study.study_uid}",
                          study.size, runs, headers={"Accept": 'multipart/related; type="application/dicom"'},
                          cold=storage)
        print(f"3b. the same, from disk:            {rates_text(rates)}", flush=True)
    finally:
        stop(orthanc)


# The transport limit ----------------------------------------------------------------------------

FILE_APP = """
import sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import FileResponse
from starlette.routing import Route

async def study(request):
    return FileResponse(sys.argv[2], media_type="application/octet-stream")

uvicorn.run(Starlette(routes=[Route("/study", study)]), host="127.0.0.1", port=int(sys.argv[1]),
            log_level="warning")
"""


def bench_static(scratch: Path, client: httpx.Client, study: Study, runs: int) -> None:
    static = scratch / "static"
    static.mkdir()
    concatenate(study, static / "study.bin")
    size = (static / "study.bin").stat().st_size

    servers = {
        "python http.server": (subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(static),
             str(PORT_STATIC)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            f"http://127.0.0.1:{PORT_STATIC}/study.bin"),
        "uvicorn FileResponse": (subprocess.Popen(
            [sys.executable, "-c", FILE_APP, str(PORT_UVICORN), str(static / "study.bin")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            f"http://127.0.0.1:{PORT_UVICORN}/study"),
    }
    try:
        for name, (process, url) in servers.items():
            wait_port(int(url.split(":")[2].split("/")[0]), process)
            print(f"4. static file, {name + ':':<21} {rates_text(bench_get(client, url, size, runs))}",
                  flush=True)
        rates = bench_get(client, servers["python http.server"][1], size, runs, cold=static)
        print(f"4b. http.server, from disk:         {rates_text(rates)}", flush=True)
    finally:
        for process, _ in servers.values():
            stop(process)


# The run ----------------------------------------------------------------------------------------

def give_up(signum, frame) -> None:
    raise SystemExit(f"the run took more than {TIME_LIMIT} s: stopped")


def run(count: int, small_count: int, runs: int, transcode_to: str) -> None:
    # A bound on the whole run; SystemExit still stops every child server in the finally blocks.
    signal.signal(signal.SIGALRM, give_up)
    signal.alarm(TIME_LIMIT)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-rad69-") as tmp:
        scratch = Path(tmp)
        data_dir, log = scratch / "data", scratch / "service.log"
        study = generate_study(scratch / "study", count, 512)
        small = generate_study(scratch / "small", small_count, 64)
        archive_studies(data_dir, [study, small])
        print(f"study: {count} CT instances, {study.size / MB:.0f} MB; small study: {small_count} instances "
              f"64x64, {small.size / MB:.0f} MB (generated and archived in {time.monotonic() - started:.0f} s)",
              flush=True)

        with httpx.Client(timeout=600) as client:
            service = start_service(data_dir, log)
            try:
                idle = memory_mb(service.pid, "VmRSS")
                reset_peak(service.pid)
                rates, _ = bench_rad69(client, study, EXPLICIT_LE, runs)
                print(f"1. RAD-69 stored syntax (ELE):      {rates_text(rates)}; service RSS {idle:.0f} MB idle, "
                      f"peak {memory_mb(service.pid):.0f} MB", flush=True)
                rates, _ = bench_rad69(client, study, EXPLICIT_LE, runs, cold=data_dir)
                print(f"1b. the same, from disk:            {rates_text(rates)}", flush=True)

                reset_peak(service.pid)
                rates, received = bench_rad69(client, study, transcode_to, runs)
                name = SYNTAX_NAMES.get(transcode_to, transcode_to)
                print(f"2. RAD-69 transcoded to {name + ':':<12}{rates_text(rates)} of stored bytes "
                      f"({received / MB:.0f} MB sent); service peak RSS {memory_mb(service.pid):.0f} MB",
                      flush=True)
            finally:
                stop(service)

            bench_orthanc(scratch, client, study, runs)
            bench_static(scratch, client, study, runs)

            # A fresh service, so that its peak is this study's alone.
            service = start_service(data_dir, log)
            try:
                idle = memory_mb(service.pid, "VmRSS")
                reset_peak(service.pid)
                rates, _ = bench_rad69(client, small, EXPLICIT_LE, 1)
                print(f"5. RAD-69 {small_count} instances in one request: {rates[0]:.0f} MB/s, "
                      f"{small_count * rates[0] * MB / small.size:.0f} instances/s; service RSS {idle:.0f} MB "
                      f"idle, peak {memory_mb(service.pid):.0f} MB", flush=True)
            finally:
                stop(service)

        problems = [line for line in log.read_text(errors="replace").splitlines()
                    if " ERROR " in line or "Traceback" in line]
        if problems:
            print(f"service log: {len(problems)} error lines, first: {problems[0][:300]}")
    print(f"total {time.monotonic() - started:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="instances of the 512x512 study (default 500)")
    parser.add_argument("--small-count", type=int, default=5000, help="instances of the 64x64 study (default 5000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement; the median is printed")
    default_target = JPEG_LOSSLESS_SV1 if shutil.which("dcmcjpeg") else JPEG_LS_LOSSLESS
    parser.add_argument("--transcode", default=default_target,
                        help="transfer syntax for line 2 (default JPEG Lossless SV1 if dcmcjpeg is "
                             "installed, else JPEG-LS lossless; RLE: 1.2.840.10008.1.2.5)")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if not args.inside:
        # Re-run inside a network namespace with loopback only (Orthanc binds every interface).
        command = (f"ip link set lo up && exec {sys.executable} {__file__} --inside --count {args.count} "
                   f"--small-count {args.small_count} --runs {args.runs} --transcode {args.transcode}")
        return subprocess.call(["unshare", "--net", "--", "bash", "-c", command])
    run(args.count, args.small_count, args.runs, args.transcode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
