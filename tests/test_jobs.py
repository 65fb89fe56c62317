"""Durable publishing jobs: queue, claim once, retry with back-off, survive a dead worker."""

import threading
from datetime import datetime, timedelta, timezone

from sqlalchemy import update

from xds.db import create_all, create_engine
from xds.jobs import DONE, FAILED, QUEUED, RETRYING, RUNNING, JobQueue, ManifestLedger, publish_job


def _queue(database_url):
    engine = create_engine(database_url)
    create_all(engine)
    return JobQueue(engine), engine


def test_enqueue_reuses_a_waiting_job(database_url):
    queue, _ = _queue(database_url)
    first = queue.enqueue("1.2.3", reason="test")
    assert queue.enqueue("1.2.3", reason="again") == first
    assert queue.enqueue("1.2.4", reason="other") != first
    assert queue.get(first).state == QUEUED


def test_claim_finish_and_fail(database_url):
    queue, _ = _queue(database_url)
    a = queue.enqueue("1.2.3", reason="test")
    b = queue.enqueue("1.2.4", reason="test")
    job = queue.claim()
    assert (job.id, job.state, job.attempts) == (a, RUNNING, 1)
    queue.finish(a, "registered", "9.9.9")
    assert queue.claim().id == b
    queue.fail(b, "XDSRegistryMetadataError: bad code")
    assert queue.claim() is None
    assert [queue.get(a).state, queue.get(b).state] == [DONE, FAILED]
    assert queue.get(a).document_unique_id == "9.9.9"


def test_retry_waits_for_its_back_off(database_url):
    queue, engine = _queue(database_url)
    job_id = queue.enqueue("1.2.3", reason="test")
    queue.claim()
    queue.retry_later(job_id, "XDSRegistryNotAvailable")
    assert queue.get(job_id).state == RETRYING
    assert queue.claim() is None  # not due yet

    with engine.begin() as conn:  # let the back-off pass
        conn.execute(update(publish_job).values(next_attempt_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
    again = queue.claim()
    assert (again.id, again.attempts) == (job_id, 2)


def test_a_dead_workers_job_is_claimed_again_after_its_lease(database_url):
    queue, engine = _queue(database_url)
    job_id = queue.enqueue("1.2.3", reason="test")
    assert queue.claim().id == job_id
    assert queue.claim() is None  # leased to the first worker
    with engine.begin() as conn:
        conn.execute(update(publish_job).values(lease_until=datetime.now(timezone.utc) - timedelta(seconds=1)))
    assert queue.claim().id == job_id


def test_concurrent_workers_claim_each_job_once(database_url):
    queue, _ = _queue(database_url)
    for n in range(20):
        queue.enqueue(f"1.2.{n}", reason="test")
    claimed, lock = [], threading.Lock()

    def worker():
        while (job := queue.claim()) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 20


def test_ledger_keeps_one_current_manifest_per_study(database_url):
    _, engine = _queue(database_url)
    ledger = ManifestLedger(engine)
    assert ledger.current("1.2.3") is None
    ledger.record("1.2.3", "2.25.1", "urn:uuid:a", 10)
    ledger.record("1.2.3", "2.25.2", "urn:uuid:b", 12)
    current = ledger.current("1.2.3")
    assert (current.document_unique_id, current.entry_uuid, current.instance_count) == ("2.25.2", "urn:uuid:b", 12)


def test_a_worker_is_running_while_its_heartbeat_is_fresh(database_url):
    from xds.jobs import HEARTBEAT_FRESH, publish_worker

    queue, engine = _queue(database_url)
    assert not queue.worker_running()
    queue.heartbeat("host:1:a")
    assert queue.worker_running()
    with engine.begin() as connection:  # the worker died without a word
        connection.execute(update(publish_worker).values(
            seen_at=datetime.now(timezone.utc) - HEARTBEAT_FRESH - timedelta(seconds=1)))
    assert not queue.worker_running()
    queue.heartbeat("host:1:a")
    queue.stop_heartbeat("host:1:a")
    assert not queue.worker_running()


def test_the_publishing_worker_beats_while_it_runs(database_url, tmp_path):
    import asyncio

    from xds.publisher import Publisher

    queue, engine = _queue(database_url)

    class _Settings:
        class source:  # noqa: N801 - the shape of Settings.source
            profile = "default"
            publish_delay_seconds = 0

        class repository:  # noqa: N801
            registry_timeout_seconds = 1

    publisher = Publisher(_Settings, archive=None, blobstore=None, jobs=queue,
                          ledger=ManifestLedger(engine))

    async def run_briefly():
        worker = asyncio.create_task(publisher.worker(poll_seconds=0.01))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if queue.worker_running():
                break
        beating = queue.worker_running()
        worker.cancel()
        try:
            await worker
        except asyncio.CancelledError:
            pass
        return beating

    assert asyncio.run(run_briefly())
    assert not queue.worker_running()  # said goodbye
