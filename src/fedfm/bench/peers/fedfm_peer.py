"""fedfm itself as a benchmarked system: ``fedfm.run`` with a sink that feeds the Recorder."""

from __future__ import annotations

import tempfile

from fedfm.metrics.sinks import Sink

# Figures of fedfm's own rows and summary that the trust and communication scenarios report.
EXTRA_ROW_KEYS = (
    "epsilon",
    "attack_success_rate",
    "secagg_seconds",
    "secagg_bytes_up",
    "secagg_bytes_down",
    "secagg_survivors",
    "lora_svd_error",
    "lora_svd_error_mean",
)
EXTRA_SUMMARY_KEYS = (
    "epsilon",
    "delta",
    "mia_auc",
    "final_attack_success_rate",
    "noise_multiplier",
    "fm4fl",
)


class _RecorderSink(Sink):
    def __init__(self, recorder) -> None:
        self.recorder = recorder
        self.extras: list[dict] = []

    def start(self, info):
        self.recorder.model_loaded(info.get("model_loaded_at"))

    def round(self, row):
        import time

        end = time.time()
        self.recorder.round_end(
            row["round"],
            row["accuracy"],
            row["bytes_up"],
            row["bytes_down"],
            start=end - row["round_seconds"],
            end=end,
        )
        self.extras.append({k: row[k] for k in EXTRA_ROW_KEYS if row.get(k) is not None})


def run(config, recorder) -> None:
    import fedfm

    sink = _RecorderSink(recorder)
    with tempfile.TemporaryDirectory(prefix="fedfm-bench-") as out:
        result = fedfm.run(config, out=out, sinks=[sink])
        recorder.set("trainable_params", result.summary["trainable_params"])
        recorder.set("round_extras", sink.extras)
        recorder.set(
            "summary_extras",
            {k: result.summary[k] for k in EXTRA_SUMMARY_KEYS if result.summary.get(k) is not None},
        )
        recorder.note("bytes: len() of the safetensors payloads sent")
        # the bench compares the per-round score on the same rows for every system
        recorder.finish(result.metrics[-1]["accuracy"])
