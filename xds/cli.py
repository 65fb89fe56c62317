"""The ``xdsi`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from sqlalchemy.exc import SQLAlchemyError

from xds.config import ConfigError, load
from xds.runtime import StartError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="xdsi",
        description="IHE XDS-I.b Imaging Document Source and XDS.b Document Repository.",
    )
    parser.add_argument("--config", metavar="FILE", default=os.environ.get("XDSI_CONFIG") or None,
                        help="TOML configuration file (default: built-in standalone settings; "
                             "environment variable XDSI_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the service (HTTP/SOAP endpoints and DICOM archive)")
    serve.add_argument("--profile", help="affinity-domain profile: a shipped name (default, nist-ids) "
                                         "or a TOML file; overrides source.profile")

    importer = commands.add_parser("import", help="archive DICOM files or folders without the network")
    importer.add_argument("paths", nargs="+", metavar="PATH")

    publish = commands.add_parser("publish", help="publish a study's manifest (through the running service)")
    publish.add_argument("study_uid", metavar="STUDY_UID")
    publish.add_argument("--no-wait", action="store_true", help="queue the job and return at once")
    publish.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (default 120)")

    commands.add_parser("jobs", help="list publishing jobs, their state and the registry's answer")

    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = load(args.config)
        if getattr(args, "profile", None):
            settings.source.profile = args.profile
    except ConfigError as exc:
        print(f"xdsi: configuration error: {exc}", file=sys.stderr)
        return 2

    command = {"serve": _serve, "import": _import, "publish": _publish, "jobs": _jobs}[args.command]
    try:
        return command(settings, args)
    except StartError as exc:
        print(f"xdsi: {exc}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        # The driver's own words (first line), not the statement: it may hold patient data.
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        print(f"xdsi: the database cannot be used ({_without_password(settings.database_url)}): "
              f"{reason}", file=sys.stderr)
        logging.getLogger("xdsi").debug("database error", exc_info=True)
        return 1


def _without_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as the user wrote it
        return url


def _serve(settings, args) -> int:
    from xds.profile import ProfileError, load_profile
    from xds.runtime import run_server

    try:
        load_profile(settings.source.profile)  # fail before anything starts
    except ProfileError as exc:
        print(f"xdsi: configuration error: source.profile: {exc}", file=sys.stderr)
        return 2
    return run_server(settings)


def _import(settings, args) -> int:
    from dicom.importer import import_paths
    from xds.runtime import open_archive

    missing = [path for path in args.paths if not os.path.exists(path)]
    if missing:
        print(f"xdsi: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    archive = open_archive(settings)
    progress = _ProgressBar()
    summary = import_paths(args.paths, archive, progress=progress)
    progress.finish()
    print(summary)
    return 0


def _publish(settings, args) -> int:
    from xds.jobs import JobQueue
    from xds.runtime import open_engine

    queue = JobQueue(open_engine(settings, must_exist=True))
    job_id = queue.enqueue(args.study_uid, reason="command line")
    print(f"publishing job {job_id} queued for study {args.study_uid}")
    if args.no_wait:
        return 0
    if not _worker_running(queue):
        print(f"xdsi: no running 'xdsi serve' uses this database; job {job_id} stays queued and "
              f"runs when one starts (see 'xdsi jobs')", file=sys.stderr)
        return 1

    # The running service's worker does the work; we watch the shared database.
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        job = queue.get(job_id)
        if job.state in ("done", "failed"):
            print(f"job {job_id}: {job.state}: {job.detail}")
            return 0 if job.state == "done" else 1
        time.sleep(0.5)
    print(f"job {job_id} still {queue.get(job_id).state} after {args.timeout:.0f} s; is 'xdsi serve' running "
          f"in this folder? See 'xdsi jobs'.", file=sys.stderr)
    return 1


def _worker_running(queue, grace_seconds: float = 3.0) -> bool:
    """A service's worker says it runs every few seconds; one just started gets a moment."""
    deadline = time.monotonic() + grace_seconds
    while not queue.worker_running():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


def _jobs(settings, args) -> int:
    from xds.jobs import JobQueue
    from xds.runtime import open_engine

    rows = JobQueue(open_engine(settings, must_exist=True)).list()
    if not rows:
        print("no publishing jobs")
        return 0
    print(f"{'id':>5}  {'state':<9} {'tries':>5}  {'study':<64}  detail")
    for job in rows:
        print(f"{job.id:>5}  {job.state:<9} {job.attempts:>5}  {job.study_uid:<64}  {job.detail}")
    return 0


class _ProgressBar:
    """Progress on stderr: files done and the rate. On a terminal one line redrawn in place;
    otherwise (a log file, a pipe) a plain line every few seconds and one at the end."""

    EVERY_SECONDS = 5.0

    def __init__(self):
        self.start = self.shown = time.monotonic()
        self.terminal = sys.stderr.isatty()
        self.line = ""

    def __call__(self, done: int, total: int | None = None) -> None:
        now = time.monotonic()
        rate = done / max(now - self.start, 1e-6)
        if total:
            filled = int(30 * done / total)
            self.line = f"[{'#' * filled}{'-' * (30 - filled)}] {done}/{total} files, {rate:.0f}/s"
        else:
            self.line = f"{done} files, {rate:.0f}/s"
        if self.terminal:
            sys.stderr.write("\r" + self.line)
            sys.stderr.flush()
        elif now - self.shown >= self.EVERY_SECONDS:
            self.shown = now
            print(self.line, file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self.terminal:
            sys.stderr.write("\n")
        elif self.line:
            print(self.line, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
