"""`kbqa worker`: ingestion only, claiming jobs from the queue shared through PostgreSQL."""

from __future__ import annotations

import signal
import threading

from app.cli.common import Options, errors, fail, run_or_fail, settings


def worker() -> None:
    """Run ingestion only: claim upload jobs from the shared PostgreSQL queue until SIGTERM or Ctrl-C."""
    from app.jobs import PgIngestionJobs
    from app.services import KnowledgeService

    chosen = settings("INFO" if Options.log_level.upper() == "WARNING" else Options.log_level)
    if chosen.store.backend != "postgres":
        fail(
            "kbqa worker takes jobs from the queue shared through PostgreSQL: set store.backend postgres and "
            "store.dsn (KBQA_STORE__BACKEND, KBQA_STORE__DSN); with sqlite, kbqa serve runs the ingestion itself"
        )
    service = KnowledgeService(chosen)
    service.database.check()  # a wrong DSN or a database down: one line (kbqa's main), before the model loads
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # before the model loads: a stop then still exits 0
        signal.signal(signum, lambda *_: stop.set())
    run_or_fail(lambda: service.embedder)
    if stop.is_set():
        return
    jobs = PgIngestionJobs(service, chosen.server.job_queue_size)
    jobs.start()
    say = lambda line: errors.print(line, soft_wrap=True, highlight=False, markup=False)  # noqa: E731
    say(f"kbqa worker {jobs.worker_id}: claiming ingestion jobs from {service.database.where}; Ctrl-C stops")
    while not stop.wait(1.0):  # woken by the signal handlers above
        pass
    say("kbqa worker: stopping after the batch at hand (its job goes back to the queue)")
    jobs.stop()
    service.close()
