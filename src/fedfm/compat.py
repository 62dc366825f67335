"""Which settings go together: every rule that spans sections and plug-ins, in one place.

The rules read what plug-ins declare (``Strategy.asynchronous``, ``needs_individual_updates``,
``needs_root_update``) and take their lists of allowed names from the registries, so a new
plug-in is covered without editing them. Checked before anything is loaded or written.
"""

from __future__ import annotations

from fedfm.config import ExperimentConfig
from fedfm.errors import ConfigError
from fedfm.methods import METHODS
from fedfm.privacy.mechanisms import mechanism
from fedfm.strategies import STRATEGIES
from fedfm.tasks import TASKS


def _protected_strategies() -> str:
    """The strategies that can aggregate a noisy or masked sum."""
    names = STRATEGIES.names(lambda s: not s.needs_individual_updates and not s.asynchronous)
    return ", ".join(names)


def check_compatible(config: ExperimentConfig) -> None:
    """Refuse combinations that cannot keep their promise (every runtime)."""
    dp, secure = mechanism(config), config.secagg.enabled
    strategy = STRATEGIES.of(config.strategy)
    name = config.strategy.plugin_name
    if dp.example_level:
        from fedfm.privacy.local import check_local  # imports opacus: only dp = 'local' loads it

        check_local(config)
    if dp.server_noise and secure:
        raise ConfigError(
            "privacy.dp = 'central' needs the server to see and clip each update, which secure "
            "aggregation hides; use privacy.dp = 'distributed' with secagg.enabled = true"
        )
    if (dp.protects or secure) and strategy.needs_individual_updates:
        raise ConfigError(
            f"strategy.name = {name!r} needs each client's update, which differential privacy "
            "and secure aggregation replace by a noisy or masked sum (local DP: one mean "
            f"update, with the accountant); allowed with them: {_protected_strategies()}"
        )
    if (dp.protects or secure) and strategy.asynchronous:
        raise ConfigError(
            f"strategy.name = {name!r} is asynchronous: it weighs each update by its staleness, "
            "while differential privacy and secure aggregation turn one synchronous round's "
            "updates into one noisy or masked sum; use a synchronous strategy "
            f"({_protected_strategies()})"
        )
    if secure and config.federation.clients_per_round < 2:
        raise ConfigError("secagg.enabled = true needs federation.clients_per_round ≥ 2")
    if config.governance.keep_updates and (secure or strategy.asynchronous):
        raise ConfigError(
            "governance.keep_updates = true needs each client's update of a synchronous round "
            + (
                "(secure aggregation hides them)"
                if secure
                else f"({name!r} aggregates buffered updates of different rounds)"
            )
        )
    dedup, task = config.governance.dedup, config.task.type
    if dedup != "off" and not TASKS.get(task).has_row_texts:
        raise ConfigError(
            f"governance.dedup = {dedup!r} compares documents, and task.type = {task!r} trains on "
            "packed blocks of them; use governance.dedup = 'off' with this task"
        )
    if config.federation.mode == "offsite" and not METHODS.of(config.method).tunes_layers:
        raise ConfigError(
            f"method.type = {config.method.plugin_name!r} is not allowed with federation.mode = "
            f"'offsite'; allowed: {' | '.join(METHODS.names(lambda m: m.tunes_layers))} (offsite "
            "trains the end layers, and this method trains none)"
        )
    if config.continual.on and strategy.asynchronous:
        raise ConfigError(
            f"[continual] stages need a synchronous strategy; {name} aggregates buffered "
            "updates of different rounds (and stages)"
        )
    if config.warmup.ensemble_steps and strategy.asynchronous:
        raise ConfigError(
            "warmup.ensemble_steps > 0 needs a synchronous strategy; "
            f"{name} aggregates buffered updates of different rounds"
        )


def check_network(config: ExperimentConfig) -> None:
    """Refuse what the network runtime cannot honour yet (``fedfm serve``), before loading."""
    check_compatible(config)
    if config.continual.on:
        raise ConfigError("[continual] stages are not built for the network runtime yet")
    s = config.server
    if not s.tokens_file:
        raise ConfigError(
            "server.tokens_file is empty: the server needs the list of allowed clients "
            "(one 'client_id token' per line)"
        )
    if config.federation.mode != "federated":
        why = {"offsite": " (fedfm join would load the full model the server withholds)"}
        raise ConfigError(
            f"federation.mode = {config.federation.mode!r}: only 'federated' runs over the "
            f"network{why.get(config.federation.mode, '')}"
        )
    needs_root = STRATEGIES.of(config.strategy).needs_root_update
    name = config.strategy.plugin_name
    refusals = [
        (
            not mechanism(config).served,
            f"privacy.dp = {config.privacy.dp!r}",
            "example-level DP-SGD",
        ),
        (config.attack.type != "none", f"attack.type = {config.attack.type!r}", "attacks"),
        (config.privacy.audit, "privacy.audit = true", "the membership audit"),
        (needs_root, f"strategy.name = {name!r}", "a server root set of training rows"),
        (config.warmup.source != "none", f"warmup.source = {config.warmup.source!r}", "warm-up"),
        (config.warmup.ensemble_steps > 0, "warmup.ensemble_steps > 0", "FedDF distillation"),
        (config.teacher.type != "none", f"teacher.type = {config.teacher.type!r}", "a teacher"),
        (config.data.labelled_fraction < 1, "data.labelled_fraction < 1", "scarce labels"),
        (
            config.governance.dedup != "off",
            f"governance.dedup = {config.governance.dedup!r}",
            "cross-client deduplication (it needs a signature exchange before training)",
        ),
    ]
    if config.evaluation.on_clients and STRATEGIES.of(config.strategy).asynchronous:
        raise ConfigError(
            f"evaluation.where = {config.evaluation.where!r} with strategy.name = {name!r}: over "
            "the network an asynchronous run keeps every client busy training; evaluate on "
            "the server (evaluation.where = 'server') or use a synchronous strategy"
        )
    for bad, key, what in refusals:
        if bad:
            raise ConfigError(
                f"{key}: {what} is simulation-only for now; the network runtime does not "
                "run it yet (use fedfm run)"
            )
