"""Bytes per client upload under secure aggregation: fp32 updates in the 32-bit ring against
int8 updates in the 16-bit ring that ``secagg.modulus_bits = 0`` picks (seconds, no model).

Each client's update is a vector of ``--dimension`` coordinates (a LoRA adapter's size); the
protocol runs among ``--clients`` in-process parties through the one driver, every message
crossing the wire format. Reported per client: the masked input's bytes (the upload that
replaces the update), every protocol message's bytes, and the plain uplink payload the codec
chain would send without secure aggregation. Usage (from the repository root):

    .venv/bin/python benchmarks/secagg_ring.py [--dimension 65536] [--clients 10]
        [--out benchmarks/results/secagg-ring/ring.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from fedfm.codecs import CodecContext, Pipeline
from fedfm.config import load_config
from fedfm.privacy.secagg import WireMessage, secagg_ring, secure_sum


def measure(codec: list[str], dimension: int, clients: int, clip: float, value_range: float):
    overrides = [
        f"secagg.value_range={value_range}",
        "secagg.enabled=true",
        "privacy.dp='distributed'",
        "privacy.noise_multiplier=1.0",
        f"privacy.clip_norm={clip}",
        f"federation.clients_per_round={clients}",
        f"codec.up={codec!r}",
    ]
    config = load_config(None, overrides)
    modulus_bits, fraction_bits = secagg_ring(config, dimension)
    rng = np.random.default_rng(0)
    # updates within the grid's range; plus the w·loss and w coordinates
    vectors = {
        f"c{i:03d}": np.append(rng.uniform(-value_range, value_range, dimension), [0.7, 1.0])
        for i in range(clients)
    }
    step = 2.0**-fraction_bits
    vectors = {c: np.rint(v / step) * step for c, v in vectors.items()}  # on the shared grid
    transcript: list[WireMessage] = []
    start = time.perf_counter()
    result = secure_sum(vectors, 0, fraction_bits, modulus_bits, transcript=transcript)
    seconds = time.perf_counter() - start
    exact = bool(np.array_equal(result.sum, sum(vectors.values())))
    up = [m for m in transcript if m.recipient == "server"]
    masked = [len(m.payload) for m in up if m.round == "masked"]
    plain = Pipeline(tuple(codec), "codec.up").encode(
        OrderedDict(w=torch.from_numpy(vectors["c000"][:dimension]).float()),
        CodecContext(1),
        {"client": "c000", "num_examples": 1, "metrics": {}},
    )
    return {
        "codec_up": codec,
        "modulus_bits": modulus_bits,
        "fraction_bits": fraction_bits,
        "masked_bytes_per_client": int(np.mean(masked)),
        "protocol_bytes_up_per_client": int(sum(len(m.payload) for m in up) / clients),
        "plain_upload_bytes": len(plain),
        "exact_sum": exact,
        "seconds": round(seconds, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dimension", type=int, default=65536)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--value-range", type=float, default=0.125, help="secagg.value_range")
    parser.add_argument("--out", default="benchmarks/results/secagg-ring/ring.json")
    args = parser.parse_args()
    runs = [
        measure(c, args.dimension, args.clients, args.clip, args.value_range)
        for c in ([], ["int8"])
    ]
    report = {
        "dimension": args.dimension,
        "clients": args.clients,
        "clip_norm": args.clip,
        "value_range": args.value_range,
        "runs": runs,
        "masked_bytes_ratio": runs[1]["masked_bytes_per_client"]
        / runs[0]["masked_bytes_per_client"],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
