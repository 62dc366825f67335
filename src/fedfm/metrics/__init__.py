"""Metrics: sinks (console, metrics.jsonl), memory accounting and the HTML report."""

from fedfm.metrics.memory import peak_rss_mb
from fedfm.metrics.sinks import ConsoleSink, JsonlSink, Sink

__all__ = ["ConsoleSink", "JsonlSink", "Sink", "peak_rss_mb"]
