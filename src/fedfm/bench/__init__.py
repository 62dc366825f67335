"""``fedfm bench``: the same scenario through fedfm and its peers (a plain PyTorch loop, Flower),
each in its own process, measured alike from outside: seconds per round, start-up, accuracy,
peak memory of the whole process tree, bytes; plus a memory-vs-clients sweep and the train
step's achieved FLOP rate against the machine's measured bf16 matmul peak.
"""

from fedfm.bench.scenarios import SCENARIOS, Scenario

__all__ = ["SCENARIOS", "Scenario"]
