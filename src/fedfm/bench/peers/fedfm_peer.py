"""fedfm itself as a benchmarked system: ``fedfm.run`` with a sink that feeds the Recorder."""

from __future__ import annotations

import tempfile

from fedfm.metrics.sinks import Sink


class _RecorderSink(Sink):
    def __init__(self, recorder) -> None:
        self.recorder = recorder

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


def run(config, recorder) -> None:
    import fedfm

    with tempfile.TemporaryDirectory(prefix="fedfm-bench-") as out:
        result = fedfm.run(config, out=out, sinks=[_RecorderSink(recorder)])
        recorder.set("trainable_params", result.summary["trainable_params"])
        recorder.note("bytes: len() of the safetensors payloads sent")
        # the bench compares the per-round score on the same rows for every system
        recorder.finish(result.metrics[-1]["accuracy"])
