"""The machine's bf16 matmul peak and the train step's achieved FLOP rate against it."""

from __future__ import annotations

import time

import numpy as np
import torch


def matmul_peak_gflops(
    n: int = 2048, dtype: torch.dtype = torch.bfloat16, seconds: float = 3.0
) -> float:
    """Measured GFLOP/s of square ``n × n`` matmuls in ``dtype`` on this machine (best of runs)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        best = max(best, 5 * 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def train_step_rate(
    task, tokens, labels, batch_size: int = 32, steps: int = 10
) -> dict[str, float]:
    """FLOPs of one train step (counted by torch's FlopCounterMode, forward + backward, on the
    longest rows so that every step has the same shape) and the achieved GFLOP/s over ``steps``."""
    from torch.utils.flop_counter import FlopCounterMode

    rows = np.argsort(tokens.lengths())[-batch_size:]
    params = list(task.shared.values())
    opt = torch.optim.AdamW(params, lr=1e-4)
    state = task.get_state()

    def step():
        loss = task.loss(tokens, labels, rows)
        opt.zero_grad()
        loss.backward()
        opt.step()

    task.model.train()
    step()  # warm-up
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - t0) / steps
    task.set_state(state)
    return {
        "step_gflop": flops / 1e9,
        "step_seconds": seconds,
        "achieved_gflops": flops / seconds / 1e9,
        "tokens": int(tokens.lengths()[rows].max()) * batch_size,
    }
