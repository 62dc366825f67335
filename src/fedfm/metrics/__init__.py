"""Metrics: sinks (console, metrics.jsonl, TensorBoard, MLflow), memory accounting and the HTML
report."""

from fedfm.metrics import mlflow_sink, tensorboard_sink  # noqa: F401  (they register their sinks)
from fedfm.metrics.memory import peak_rss_mb
from fedfm.metrics.sinks import SINKS, ConsoleSink, JsonlSink, Sink, scalars

__all__ = ["SINKS", "ConsoleSink", "JsonlSink", "Sink", "peak_rss_mb", "scalars"]
