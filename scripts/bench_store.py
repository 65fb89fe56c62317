"""C-STORE speed: storescu -> our SCP, -> dcmtk storescp, -> Orthanc (if installed).

Generates a 500-instance CT study (512x512, 16-bit, ~0.5 MB each) in a temporary folder and
times ``storescu`` sending it to each receiver, printing instances/s and our SCP's peak RSS,
and the time per instance when each instance comes on an association of its own. Also the
disk's own rate for the same files written and fsynced one by one: our SCP answers each
instance only once it is on disk, and storescu waits for each answer, so storescp's time per
instance plus that disk time roughly estimates what any receiver that does so can reach
(storescp answers before its files reach the disk; Orthanc fsyncs each file, its
SyncStorageArea being on by default, but not the file's folder).

storescp and Orthanc listen on every interface, so the whole run happens inside a private
network namespace whose only interface is loopback (``unshare --net``, run as root); this
script re-runs itself there. Every dcmtk and Orthanc process gets ``TCP_NODELAY=1``.

    python scripts/bench_store.py [--count 500] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PORT_OURS, PORT_STORESCP, PORT_ORTHANC, HTTP_ORTHANC = 11112, 11113, 14242, 18042
ENV = {**os.environ, "TCP_NODELAY": "1"}
ASSOCIATIONS = 20  # instances sent one association each


def generate_study(folder: Path, count: int) -> int:
    """``count`` CT instances of one study; returns the total size in bytes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    study, series = generate_uid(), generate_uid()
    total = 0
    for number in range(1, count + 1):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID = "Bench^Mark", "BENCH-1"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20240101", "120000", "BENCH"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, number
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = 512
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = os.urandom(512 * 512 * 2)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return total


def storescu(port: int, called: str, folder: Path) -> float:
    """Seconds storescu takes to send the folder on one association."""
    start = time.perf_counter()
    subprocess.run(["storescu", "-aet", "BENCH", "-aec", called, "127.0.0.1", str(port),
                    "+sd", str(folder)], env=ENV, check=True, capture_output=True)
    return time.perf_counter() - start


def one_per_association(port: int, called: str, folder: Path, count: int) -> float:
    """Milliseconds per instance when each of ``count`` instances has an association of its own,
    as many modalities send: the cost of accepting an association, per instance."""
    files = sorted(folder.iterdir())[:count]
    start = time.perf_counter()
    for path in files:
        subprocess.run(["storescu", "-aet", "BENCH", "-aec", called, "127.0.0.1", str(port),
                        str(path)], env=ENV, check=True, capture_output=True)
    return (time.perf_counter() - start) / len(files) * 1000


def wait_port(port: int, timeout: float = 20) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def serve_ours(scratch: str, durable: bool = True) -> None:
    """Child process: our archive and DICOM server until SIGTERM.

    ``durable=False`` is for measurement only (the product has no such setting): no fsync of
    files or folders, SQLite commits without syncing. What the rate gains then is the price
    of acknowledging each instance only once it is on disk, which storescp does not do."""
    import logging

    from sqlalchemy import event

    from dicom.archive import Archive
    from dicom.index import create_index_tables
    from dicom.scp import DicomServer
    from xds.blobstore import FileBlobStore
    from xds.db import create_engine
    from xds.runtime import freeze_start_up_objects

    logging.basicConfig(level=logging.WARNING)
    engine = create_engine(f"sqlite:///{scratch}/index.db")
    if not durable:
        os.fsync = lambda fd: None

        @event.listens_for(engine, "connect")
        def _no_sync(dbapi_connection, _record):
            dbapi_connection.execute("PRAGMA synchronous=OFF")
    create_index_tables(engine)
    server = DicomServer(Archive(engine, FileBlobStore(f"{scratch}/blobs")), port=PORT_OURS)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])  # for sigwait, in every thread
    server.start()
    freeze_start_up_objects()  # as ``xdsi serve`` does once started
    signal.sigwait([signal.SIGTERM])
    server.stop()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def median_text(values: list[float], unit: str, digits: int = 0) -> str:
    runs = ", ".join(f"{value:.{digits}f}" for value in values)
    return f"{statistics.median(values):7.{digits}f} {unit} (runs: {runs})"


def run(count: int, runs: int) -> None:
    """``runs`` rounds; in each, every receiver gets the study once, new, one after the other.
    This disk's speed drifts by a third from minute to minute, so rounds keep the receivers
    side by side, and the ratio to storescp is taken within each round."""
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        tmp = Path(tmp)
        study = tmp / "study"
        study.mkdir()
        size = generate_study(study, count)
        print(f"study: {count} CT instances, {size / 1e6:.0f} MB", flush=True)

        rates: dict[str, list[float]] = {"ours": [], "dup": [], "unsynced": [], "storescp": [],
                                         "orthanc": [], "floor": []}
        per_association: dict[str, list[float]] = {"ours": [], "storescp": [], "orthanc": []}
        peaks = []
        for round_number in range(runs):
            scratch = tmp / f"round-{round_number}"
            scratch.mkdir()
            # Each step starts with nothing left for the disk to write back from the one
            # before (storescp's 260 MB, say), which would slow every fsync meanwhile.
            os.sync()
            rates["floor"].append(durable_writes_per_second(scratch, study, count))
            peaks.append(round_ours(scratch, study, count, rates, per_association))
            os.sync()
            round_ours_unsynced(scratch, study, count, rates)
            os.sync()
            round_storescp(scratch, study, count, rates, per_association)
            os.sync()
            round_orthanc(scratch, study, count, rates, per_association)
            shutil.rmtree(scratch)

        print(f"{'storescu -> our SCP (new)':<30} {median_text(rates['ours'], 'instances/s')}")
        print(f"{'storescu -> our SCP (dup)':<30} {median_text(rates['dup'], 'instances/s')}")
        print(f"{'  the same, no fsync (*)':<30} {median_text(rates['unsynced'], 'instances/s')}")
        print(f"{'storescu -> storescp':<30} {median_text(rates['storescp'], 'instances/s')}")
        if rates["orthanc"]:
            print(f"{'storescu -> Orthanc (new)':<30} {median_text(rates['orthanc'], 'instances/s')}")
        else:
            print("Orthanc is not installed: skipped")
        print(f"{'disk: write + fsync, one by one':<30} {median_text(rates['floor'], 'files/s')}")
        ratios = [ours / limit
                  for ours, limit in zip(rates["ours"], rates["storescp"], strict=True)]
        print(f"{'our SCP / storescp, per round':<30} {median_text(ratios, '', 2)}")
        # storescp's time per instance plus the disk's time to write and sync one file.
        estimates = [1 / (1 / limit + 1 / floor)
                     for limit, floor in zip(rates["storescp"], rates["floor"], strict=True)]
        print(f"{'syncing receiver, roughly (**)':<30} {median_text(estimates, 'instances/s')}")
        shares = [ours / estimate for ours, estimate in zip(rates["ours"], estimates, strict=True)]
        print(f"{'our SCP / that, per round':<30} {median_text(shares, '', 2)}")
        print(f"our SCP peak RSS: {max(peaks):.0f} MB")
        print("(*) measurement only: our SCP with fsync and SQLite syncing switched off, as "
              "storescp runs; the product always syncs before it answers")
        print("disk: the study's files written one after the other, each fsynced with its "
              "folder")
        print("(**) a rough estimate of what a receiver that answers each instance only once it "
              "is on disk can reach with this sender, which waits for each answer: storescp's "
              "time per instance (the sender's own share and more) plus the disk's write and "
              "sync of one file; as noisy as storescp's rate")
        print(f"one association per instance ({ASSOCIATIONS} instances, already stored):")
        for name, label in (("ours", "our SCP"), ("storescp", "storescp"), ("orthanc", "Orthanc")):
            if per_association[name]:
                print(f"  {label:<28} {median_text(per_association[name], 'ms per instance', 1)}")


def durable_writes_per_second(scratch: Path, study: Path, count: int) -> float:
    """Write the study's files one by one, each with fsync of the file and of its folder (what
    our SCP does for every new instance before it answers, without anything else)."""
    folder = scratch / "durable"
    folder.mkdir()
    sources = sorted(study.iterdir())[:count]
    start = time.perf_counter()
    for number, source in enumerate(sources):
        fd = os.open(folder / f"{number}.dcm", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, source.read_bytes())
            os.fsync(fd)
        finally:
            os.close(fd)
        folder_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(folder_fd)
        finally:
            os.close(folder_fd)
    return len(sources) / (time.perf_counter() - start)


def round_ours(scratch: Path, study: Path, count: int, rates, per_association) -> float:
    """Our SCP in its own process (so that its peak RSS is its own) on an empty archive: the
    study new, then again (all duplicates). Returns the peak RSS in MB."""
    folder = scratch / "ours"
    folder.mkdir()
    ours = subprocess.Popen([sys.executable, __file__, "--serve", str(folder)])
    try:
        wait_port(PORT_OURS)
        rates["ours"].append(count / storescu(PORT_OURS, "XDSI", study))
        rates["dup"].append(count / storescu(PORT_OURS, "XDSI", study))
        per_association["ours"].append(one_per_association(PORT_OURS, "XDSI", study, ASSOCIATIONS))
        return peak_rss_mb(ours.pid)
    finally:
        ours.send_signal(signal.SIGTERM)
        ours.wait(timeout=30)


def round_ours_unsynced(scratch: Path, study: Path, count: int, rates) -> None:
    folder = scratch / "ours-unsynced"
    folder.mkdir()
    ours = subprocess.Popen([sys.executable, __file__, "--serve", str(folder), "--no-sync"])
    try:
        wait_port(PORT_OURS)
        rates["unsynced"].append(count / storescu(PORT_OURS, "XDSI", study))
    finally:
        ours.send_signal(signal.SIGTERM)
        ours.wait(timeout=30)


def round_storescp(scratch: Path, study: Path, count: int, rates, per_association) -> None:
    """dcmtk's storescp: files written as they come, nothing indexed or synced: the limit."""
    out = scratch / "storescp"
    out.mkdir()
    storescp = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", str(out),
                                 "-pdu", "131072", str(PORT_STORESCP)], env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    measure_peer(storescp, "storescp", PORT_STORESCP, "STORESCP", study, count, rates,
                 per_association)


def round_orthanc(scratch: Path, study: Path, count: int, rates, per_association) -> None:
    binary = shutil.which("Orthanc")
    if binary is None:
        return
    storage = scratch / "orthanc"
    config = {"Name": "BENCH", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
              "StorageCompression": False, "DicomServerEnabled": True, "DicomAet": "ORTHANC",
              "DicomPort": PORT_ORTHANC, "DicomThreadsCount": 4, "HttpServerEnabled": True,
              "HttpPort": HTTP_ORTHANC, "RemoteAccessAllowed": False,
              "AuthenticationEnabled": False, "SaveJobs": False}
    (scratch / "orthanc.json").write_text(json.dumps(config))
    orthanc = subprocess.Popen([binary, str(scratch / "orthanc.json")], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    measure_peer(orthanc, "orthanc", PORT_ORTHANC, "ORTHANC", study, count, rates,
                 per_association, start_timeout=60)


def measure_peer(process: subprocess.Popen, name: str, port: int, called: str, study: Path,
                 count: int, rates, per_association, start_timeout: float = 20) -> None:
    """Once ``process`` listens: the study on one association, then instances one association
    each; the process is stopped whatever happens."""
    try:
        wait_port(port, timeout=start_timeout)
        rates[name].append(count / storescu(port, called, study))
        per_association[name].append(one_per_association(port, called, study, ASSOCIATIONS))
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--no-sync", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve:
        serve_ours(args.serve, durable=not args.no_sync)
        return 0
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (Debian package dcmtk)", file=sys.stderr)
            return 1
    if not args.inside:
        # Re-run inside a network namespace with loopback only (storescp binds everywhere).
        command = (f"ip link set lo up && {sys.executable} {__file__} --inside "
                   f"--count {args.count} --runs {args.runs}")
        return subprocess.call(["unshare", "--net", "--", "bash", "-c", command])
    run(args.count, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
