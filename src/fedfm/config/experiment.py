"""The whole experiment: its sections, the plug-in specs of ``[method]`` and ``[strategy]``, and
the rules that span sections (checked once, when the config is built)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fedfm.config.checks import check, registry
from fedfm.config.clients import ContinualConfig, PersonalizeConfig
from fedfm.config.fm4fl import SyntheticConfig, TeacherConfig, WarmupConfig
from fedfm.config.governance import GovernanceConfig
from fedfm.config.offsite import OffsiteConfig
from fedfm.config.sections import (
    CodecConfig,
    DataConfig,
    EvaluationConfig,
    FederationConfig,
    LoggingConfig,
    ModelConfig,
    PartitionConfig,
    PluginsConfig,
    RuntimeConfig,
    ServerConfig,
    TaskConfig,
)
from fedfm.config.security import AttackConfig, LimitsConfig, PrivacyConfig, SecAggConfig

# LoRA's default targets are BERT's attention names; Llama-style decoders call them these.
CAUSAL_LM_LORA_TARGETS = ("q_proj", "v_proj")


def _check_fm4fl(config: ExperimentConfig) -> None:
    """The FM-for-FL sections fit together: a teacher where one is needed, classification only."""
    fm4fl = (
        config.teacher.type != "none"
        or config.warmup.source != "none"
        or config.warmup.ensemble_steps
        or config.data.labelled_fraction < 1
    )
    if fm4fl:
        check(
            config.task.type == "classification",
            "task.type",
            config.task.type,
            "'classification' with [teacher], [warmup] or data.labelled_fraction",
        )
    if config.warmup.ensemble_steps:
        check(
            config.privacy.dp == "none" and not config.secagg.enabled,
            "warmup.ensemble_steps",
            config.warmup.ensemble_steps,
            "0 with DP or secure aggregation (ensemble distillation reads each client's model)",
        )
    if config.warmup.source == "transfer":
        check(
            config.teacher.type != "none",
            "teacher.type",
            config.teacher.type,
            "a teacher to label the transfer set of warmup.source = 'transfer'",
        )
    if config.teacher.pseudo_label_threshold > 0:
        check(
            config.teacher.type != "none",
            "teacher.type",
            config.teacher.type,
            "a teacher for teacher.pseudo_label_threshold > 0",
        )
        check(
            config.data.labelled_fraction < 1,
            "teacher.pseudo_label_threshold",
            config.teacher.pseudo_label_threshold,
            "0 unless data.labelled_fraction < 1 (there are no unlabelled rows to pseudo-label)",
        )


def _method_spec_default() -> Any:
    return registry("method").get("lora").Spec()


def _strategy_spec_default() -> Any:
    return registry("strategy").get("fedavg").Spec()


def _check_personalize(config: ExperimentConfig) -> None:
    """A ``[personalize]`` rule fits the run: federated, no example-level DP, and the rule's
    own conditions (e.g. ``local_head`` needs a task with a head)."""
    method = config.personalize.method
    if method == "none":
        return
    check(
        config.federation.mode == "federated",
        "personalize.method",
        method,
        "'none' unless federation.mode = 'federated'",
    )
    check(
        config.privacy.dp != "local",
        "privacy.dp",
        config.privacy.dp,
        f"'none', 'central' or 'distributed' with personalize.method = {method!r}",
    )
    registry("personalizer").get(method).check_config(config)


def _check_continual(config: ExperimentConfig) -> None:
    """``[continual]`` stages fit the run: the rounds they take, a label-sharing task, a
    synchronous federated (or centralized) run scored by the server."""
    c = config.continual
    if not c.on:
        return
    rounds = len(c.stages) * c.rounds_per_stage
    check(
        config.federation.rounds == rounds,
        "federation.rounds",
        config.federation.rounds,
        f"{rounds} (len(continual.stages) × continual.rounds_per_stage)",
    )
    check(
        config.federation.mode != "standalone",
        "federation.mode",
        config.federation.mode,
        "'federated' or 'centralized' with [continual] stages",
    )
    check(
        registry("task").get(config.task.type).shares_label_set,
        "task.type",
        config.task.type,
        "a task with labels (classification) for [continual] stages by label",
    )
    check(
        config.evaluation.on_server,
        "evaluation.where",
        config.evaluation.where,
        "'server' or 'both' with [continual] stages (the server scores each stage)",
    )


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment; ``ExperimentConfig()`` is the built-in default."""

    name: str = "agnews-lora"  # the run directory's name (runs/<name>/, -2, -3 … when taken)
    seed: int = 0  # every random choice (partition, sampling, init, noise) derives from it
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    method: Any = field(default_factory=_method_spec_default)
    federation: FederationConfig = field(default_factory=FederationConfig)
    offsite: OffsiteConfig = field(default_factory=OffsiteConfig)
    strategy: Any = field(default_factory=_strategy_spec_default)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    personalize: PersonalizeConfig = field(default_factory=PersonalizeConfig)
    continual: ContinualConfig = field(default_factory=ContinualConfig)
    governance: GovernanceConfig = field(default_factory=GovernanceConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)

    def __post_init__(self) -> None:
        check(
            bool(self.name) and "/" not in self.name,
            "name",
            self.name,
            "a non-empty name without '/'",
        )
        check(0 <= self.seed < 2**32, "seed", self.seed, "0 … 2**32 − 1")
        registry("task").get(self.task.type).check_config(self)  # the task's own rules
        _check_fm4fl(self)
        _check_personalize(self)
        _check_continual(self)
        if self.evaluation.on_clients:
            check(
                self.federation.mode == "federated",
                "evaluation.where",
                self.evaluation.where,
                "'server' unless federation.mode = 'federated' (clients evaluate their own rows)",
            )
        if self.federation.mode in ("federated", "offsite") and self.partition.clients:
            check(
                self.federation.clients_per_round <= self.partition.clients,
                "federation.clients_per_round",
                self.federation.clients_per_round,
                f"≤ partition.clients ({self.partition.clients})",
            )

    def replace(self, **changes: Any) -> ExperimentConfig:
        """A copy with ``changes`` (whole sections or ``name``/``seed``), validated again."""
        return dataclasses.replace(self, **changes)


SECTIONS: dict[str, type] = {
    "task": TaskConfig,
    "model": ModelConfig,
    "data": DataConfig,
    "partition": PartitionConfig,
    "federation": FederationConfig,
    "offsite": OffsiteConfig,
    "runtime": RuntimeConfig,
    "codec": CodecConfig,
    "privacy": PrivacyConfig,
    "secagg": SecAggConfig,
    "attack": AttackConfig,
    "limits": LimitsConfig,
    "server": ServerConfig,
    "teacher": TeacherConfig,
    "warmup": WarmupConfig,
    "synthetic": SyntheticConfig,
    "evaluation": EvaluationConfig,
    "personalize": PersonalizeConfig,
    "continual": ContinualConfig,
    "governance": GovernanceConfig,
    "logging": LoggingConfig,
    "plugins": PluginsConfig,
}
"""The sections whose schema is fixed, in file order; ``[method]`` and ``[strategy]`` are the
spec of the plug-in they name."""
