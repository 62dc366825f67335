"""Secure aggregation for in-process runtimes: the clients are parties in this process.

The same :class:`~fedfm.privacy.secagg.SecAggServer` that a network round drives stage by stage
drives this one (:func:`~fedfm.privacy.secagg.run_parties`): each client computes its own
secure input (:meth:`~fedfm.client.app.ClientApp.secure_input`: train, code, the vector of what
the server would decode) at the masking stage, and the server side sees only protocol messages.
One driver for every runtime: ``Federation._secure_round`` asks the runtime for the round.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedfm.client.app import ClientTask
from fedfm.errors import FedFMError, TrainingError
from fedfm.privacy.secagg import run_parties
from fedfm.runtimes.base import SecureRound
from fedfm.state import Update

SecureInput = Callable[[ClientTask], tuple[np.ndarray, Update | None]]


def in_process_secure_round(
    rnd: int,
    tasks: list[ClientTask],
    sharers: list[str],
    protocol,
    secure_input: SecureInput,
    progress: Callable[[int, int], None] | None = None,
) -> SecureRound:
    """One secure round among in-process parties. ``sharers`` share keys; the clients of
    ``tasks`` then mask ``secure_input(task)`` (vector, public report); a sharer without a task
    (a simulated dropout) or whose input fails vanishes after key sharing."""
    by_id = {t.client_id: t for t in tasks}
    failures: list[tuple[str, Exception]] = []
    reports: list[Update] = []
    done = 0

    def input_of(cid: str) -> np.ndarray | None:
        nonlocal done
        task = by_id.get(cid)
        if task is None:
            return None
        try:
            vector, report = secure_input(task)
        except TrainingError:
            raise  # divergence stops the run, as in a plain round
        except FedFMError as e:
            failures.append((cid, e))
            return None
        finally:
            done += 1
            if progress is not None:
                progress(done, len(tasks))
        if report is not None:
            reports.append(report)
        return vector

    trainers = [t.client_id for t in tasks]
    result = run_parties(protocol, sharers, input_of, seed=rnd, trainers=trainers)
    failures.extend(result.failures)  # messages the protocol refused (a client that left)
    summed = set(result.survivors)
    return SecureRound(
        sum=result.sum,
        survivors=result.survivors,
        bytes_up=result.bytes_up,
        bytes_down=result.bytes_down,
        seconds=result.seconds,
        failures=failures,
        reports=sorted((r for r in reports if r.client_id in summed), key=lambda r: r.client_id),
    )
