#!/usr/bin/env python3
"""Benchmark of the Document Repository on loopback; prints the figures.

- ITI-41 submissions per second for a 10 KB document, each with its ITI-42 round trip to the
  (embedded) registry;
- MB/s for a 200 MB and a 1 GB document submitted by ITI-41 (MTOM) and retrieved by ITI-43;
- the same bytes uploaded to and downloaded from a trivial streaming endpoint on the same HTTP
  stack (uvicorn + Starlette): the transport limit;
- the same bytes written to a file and fsynced: the durable-storage limit, which an ITI-41
  cannot beat since it acknowledges only stored bytes;
- the service's peak resident memory (VmHWM) over the whole run.

Everything runs on 127.0.0.1; the servers are child processes of this script, stopped at the end.

    .venv/bin/python scripts/bench_repository.py [--sizes 200,1000] [--submissions 300]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_repository import provide_and_register  # noqa: E402  (a valid ITI-41 body)
from xds import ebrim  # noqa: E402

MB = 1_000_000
BLOCK = os.urandom(1 << 20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"server at {url} did not start")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def generated(size: int):
    """``size`` bytes, produced lazily from one random block."""
    left = size
    while left:
        chunk = BLOCK[: min(left, len(BLOCK))]
        left -= len(chunk)
        yield chunk


# ITI-41 / ITI-43 --------------------------------------------------------------------------------

def mtom_submission(unique_id: str, size: int):
    """(content type, body iterator) of an ITI-41 whose document is an MTOM attachment."""
    envelope = provide_and_register(unique_id, b"")
    envelope = envelope.replace(b'<xds:Document id="Document01"></xds:Document>',
                                b'<xds:Document id="Document01"><xop:Include '
                                b'xmlns:xop="http://www.w3.org/2004/08/xop/include" href="cid:doc@bench"/></xds:Document>')
    envelope = envelope.replace(b'mimeType="text/plain"', b'mimeType="application/octet-stream"')
    boundary = "bench_" + uuid.uuid4().hex
    content_type = (f'multipart/related; boundary="{boundary}"; type="application/xop+xml"; start="<root@bench>"; '
                    f'start-info="application/soap+xml"')

    def body():
        yield (f"--{boundary}\r\nContent-Type: application/xop+xml; charset=UTF-8; type=\"application/soap+xml\"\r\n"
               f"Content-ID: <root@bench>\r\n\r\n").encode() + envelope
        yield (f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n"
               f"Content-ID: <doc@bench>\r\n\r\n").encode()
        yield from generated(size)
        yield f"\r\n--{boundary}--\r\n".encode()

    return content_type, body()


def retrieve_envelope(repository_unique_id: str, unique_id: str) -> bytes:
    from tests.repository_helpers import retrieve_request

    return retrieve_request(repository_unique_id, unique_id)


def check_success(response: httpx.Response) -> None:
    marker = ebrim.SUCCESS.encode()
    if response.status_code != 200 or marker not in response.content[:20000]:
        raise SystemExit(f"unexpected answer {response.status_code}: {response.content[:600]!r}")


def bench_small_submissions(base: str, count: int) -> float:
    with httpx.Client(timeout=60) as client:
        bodies = [provide_and_register(f"2.25.{uuid.uuid4().int}", os.urandom(10_000)) for _ in range(count)]
        start = time.perf_counter()
        for body in bodies:
            check_success(client.post(f"{base}/xds/repository", content=body,
                                      headers={"Content-Type": "application/soap+xml"}))
        return count / (time.perf_counter() - start)


def bench_large_document(base: str, repository_unique_id: str, size: int) -> tuple[float, float]:
    unique_id = f"2.25.{uuid.uuid4().int}"
    content_type, body = mtom_submission(unique_id, size)
    with httpx.Client(timeout=600) as client:
        start = time.perf_counter()
        check_success(client.post(f"{base}/xds/repository", content=body, headers={"Content-Type": content_type}))
        upload = size / MB / (time.perf_counter() - start)

        start = time.perf_counter()
        received = 0
        with client.stream("POST", f"{base}/xds/repository", content=retrieve_envelope(repository_unique_id, unique_id),
                           headers={"Content-Type": "application/soap+xml"}) as response:
            if response.status_code != 200:
                raise SystemExit(f"ITI-43 answered {response.status_code}")
            for chunk in response.iter_raw(1 << 20):
                received += len(chunk)
        download = size / MB / (time.perf_counter() - start)
    # A plain SOAP request gets inline base64: 4/3 of the bytes travel.
    if received < size:
        raise SystemExit(f"ITI-43 returned {received} bytes for a {size}-byte document")
    return upload, download


def bench_large_document_mtom_retrieve(base: str, repository_unique_id: str, size: int) -> float:
    """ITI-43 asked in MTOM, so that the document travels as raw bytes."""
    unique_id = f"2.25.{uuid.uuid4().int}"
    content_type, body = mtom_submission(unique_id, size)
    with httpx.Client(timeout=600) as client:
        check_success(client.post(f"{base}/xds/repository", content=body, headers={"Content-Type": content_type}))
        envelope = retrieve_envelope(repository_unique_id, unique_id)
        boundary = "bench_" + uuid.uuid4().hex
        request = (f"--{boundary}\r\nContent-Type: application/xop+xml; charset=UTF-8; type=\"application/soap+xml\"\r\n"
                   f"Content-ID: <root@bench>\r\n\r\n").encode() + envelope + f"\r\n--{boundary}--\r\n".encode()
        start = time.perf_counter()
        received = 0
        with client.stream("POST", f"{base}/xds/repository", content=request, headers={
                "Content-Type": f'multipart/related; boundary="{boundary}"; type="application/xop+xml"; '
                                f'start="<root@bench>"; start-info="application/soap+xml"'}) as response:
            for chunk in response.iter_raw(1 << 20):
                received += len(chunk)
        elapsed = time.perf_counter() - start
    if received < size:
        raise SystemExit(f"ITI-43 returned {received} bytes for a {size}-byte document")
    return size / MB / elapsed


# The transport limit ------------------------------------------------------------------------------

TRANSPORT_APP = '''
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route
import uvicorn, sys

BLOCK = bytes(1 << 20)

async def upload(request):
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    return PlainTextResponse(str(size))

async def download(request):
    size = int(request.query_params["size"])
    async def body():
        left = size
        while left:
            chunk = BLOCK[: min(left, len(BLOCK))]
            left -= len(chunk)
            yield chunk
    return StreamingResponse(body(), media_type="application/octet-stream")

app = Starlette(routes=[Route("/up", upload, methods=["POST"]), Route("/down", download), Route("/", upload)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
'''


def bench_transport(base: str, size: int) -> tuple[float, float]:
    with httpx.Client(timeout=600) as client:
        start = time.perf_counter()
        client.post(f"{base}/up", content=generated(size))
        upload = size / MB / (time.perf_counter() - start)
        start = time.perf_counter()
        with client.stream("GET", f"{base}/down", params={"size": size}) as response:
            for _ in response.iter_raw(1 << 20):
                pass
        download = size / MB / (time.perf_counter() - start)
    return upload, download


def bench_disk(folder: str, size: int) -> float:
    """Writing the same bytes to a file and fsyncing it: what durable storage costs here."""
    path = Path(folder) / "disk-limit"
    start = time.perf_counter()
    with open(path, "wb") as f:
        for chunk in generated(size):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    elapsed = time.perf_counter() - start
    path.unlink()
    return size / MB / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200,1000", help="large document sizes in MB (default 200,1000)")
    parser.add_argument("--submissions", type=int, default=300, help="number of 10 KB submissions")
    args = parser.parse_args()
    sizes = [int(s) * MB for s in args.sizes.split(",")]

    with tempfile.TemporaryDirectory() as scratch:
        port, transport_port = free_port(), free_port()
        env = dict(os.environ, XDSI_STORAGE_DATA_DIR=scratch, XDSI_SERVER_PORT=str(port), XDSI_DICOM_ENABLED="false")
        service = subprocess.Popen([sys.executable, "-m", "xds.cli", "serve"], cwd=ROOT, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        transport = subprocess.Popen([sys.executable, "-c", TRANSPORT_APP, str(transport_port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base, transport_base = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{transport_port}"
        try:
            wait_ready(f"{base}/health", service)
            wait_ready(f"{transport_base}/", transport)
            repository_unique_id = "1.3.6.1.4.1.21367.13.40.300"

            rate = bench_small_submissions(base, args.submissions)
            print(f"ITI-41 10 KB document with ITI-42 round trip: {rate:.0f} submissions/s "
                  f"({args.submissions} sequential, one connection)")
            for size in sizes:
                up, _ = bench_large_document(base, repository_unique_id, size)
                down = bench_large_document_mtom_retrieve(base, repository_unique_id, size)
                t_up, t_down = bench_transport(transport_base, size)
                disk = bench_disk(scratch, size)
                print(f"{size // MB} MB document: ITI-41 {up:.0f} MB/s, ITI-43 {down:.0f} MB/s; "
                      f"transport limit upload {t_up:.0f} MB/s, download {t_down:.0f} MB/s; "
                      f"ratio {up / t_up:.2f} / {down / t_down:.2f}; "
                      f"disk write+fsync {disk:.0f} MB/s (ITI-41 / disk {up / disk:.2f})")
            print(f"service peak RSS over the run: {peak_rss_mb(service.pid):.0f} MB")
        finally:
            for process in (service, transport):
                process.terminate()
                process.wait(10)


if __name__ == "__main__":
    main()
