"""Prometheus metrics of one app: requests per route, queue depths, ingestion and generation counters."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric

from app.jobs import IngestionJobs


class Metrics:
    """The app's metrics, in a registry of its own (several apps can live in one process, as in tests)."""

    def __init__(self, jobs: IngestionJobs) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kbqa_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "kbqa_request_seconds",
            "HTTP request latency by route (to the last byte for streams).",
            ["route", "method"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.generated_tokens = Counter(
            "kbqa_generated_tokens", "Tokens generated for answers.", registry=self.registry
        )
        queue = Gauge("kbqa_ingestion_queue_depth", "Ingestion jobs waiting to run.", registry=self.registry)
        queue.set_function(jobs.depth)
        self.registry.register(_IngestionCollector(jobs))

    def render(self) -> bytes:
        """Return the metrics in the Prometheus text format."""
        return generate_latest(self.registry)


class _IngestionCollector:
    """Files and chunks ingested by jobs, read from the job table (so they survive restarts)."""

    def __init__(self, jobs: IngestionJobs) -> None:
        self.jobs = jobs

    def collect(self) -> Iterator[Metric]:
        """Yield the ingestion counters."""
        files, chunks = self.jobs.totals()
        by_status = CounterMetricFamily(
            "kbqa_ingested_files", "Files handled by ingestion jobs.", labels=["status"]
        )
        for status, count in sorted(files.items()):
            by_status.add_metric([status], count)
        yield by_status
        yield CounterMetricFamily("kbqa_ingested_chunks", "Chunks written by ingestion jobs.", value=chunks)
