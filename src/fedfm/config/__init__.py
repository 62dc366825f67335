"""Experiment config: frozen dataclasses, loaded from TOML, validated once.

Every key has a default, so an empty file is the built-in default experiment (federated LoRA
fine-tuning of all-MiniLM-L6-v2 on AG News). Unknown keys, wrong types and values out of range
raise :class:`~fedfm.errors.ConfigError` naming ``section.key``, the value and what is allowed.

Sections whose keys depend on a plug-in (``[method]`` by ``type``, ``[strategy]`` by ``name``)
are parsed into the plug-in's own spec dataclass, found through its registry. The config never
imports a plug-in package (they import the config); it reads :data:`fedfm.registry.REGISTRIES`.

- :mod:`~fedfm.config.checks`: ``check``, ``check_choice`` and the registry look-up;
- :mod:`~fedfm.config.paths`: ``${FEDFM_DATA}`` and the other variables in configured paths;
- :mod:`~fedfm.config.sections`, :mod:`~fedfm.config.security`, :mod:`~fedfm.config.fm4fl`:
  the sections, each checking its own values;
- :mod:`~fedfm.config.experiment`: :class:`ExperimentConfig` and the rules across sections;
- :mod:`~fedfm.config.parse`: TOML and ``--set`` overrides to a config;
- :mod:`~fedfm.config.toml`: a config back to TOML.
"""

from fedfm.config.checks import check, check_choice
from fedfm.config.clients import PersonalizeConfig
from fedfm.config.experiment import CAUSAL_LM_LORA_TARGETS, ExperimentConfig
from fedfm.config.fm4fl import SyntheticConfig, TeacherConfig, WarmupConfig
from fedfm.config.governance import GovernanceConfig
from fedfm.config.offsite import OffsiteConfig
from fedfm.config.parse import (
    apply_overrides,
    build_dataclass,
    config_from_dict,
    load_config,
    parse_config_text,
    parse_override,
)
from fedfm.config.paths import DEFAULT_DATA_ROOT, data_root, resolve_path
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
from fedfm.config.toml import config_to_dict, config_to_toml

__all__ = [
    "CAUSAL_LM_LORA_TARGETS",
    "DEFAULT_DATA_ROOT",
    "AttackConfig",
    "CodecConfig",
    "DataConfig",
    "EvaluationConfig",
    "PersonalizeConfig",
    "ExperimentConfig",
    "FederationConfig",
    "GovernanceConfig",
    "LimitsConfig",
    "LoggingConfig",
    "ModelConfig",
    "OffsiteConfig",
    "PartitionConfig",
    "PluginsConfig",
    "PrivacyConfig",
    "RuntimeConfig",
    "SecAggConfig",
    "ServerConfig",
    "SyntheticConfig",
    "TaskConfig",
    "TeacherConfig",
    "WarmupConfig",
    "apply_overrides",
    "build_dataclass",
    "check",
    "check_choice",
    "config_from_dict",
    "config_to_dict",
    "config_to_toml",
    "data_root",
    "load_config",
    "parse_config_text",
    "parse_override",
    "resolve_path",
]
