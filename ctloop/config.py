"""The pipeline's parameters: one YAML file, checked once, with errors that name the key.

The reference defaults ship inside the package (`ctloop/ctloop.yaml`, read through
importlib.resources), so an installed ctloop finds them wherever it runs.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG_NAME = "ctloop.yaml"
# The model families of ctloop.models (named here too: config is read by stages without torch).
MODEL_FAMILIES = ("resnet", "dilated", "mixer", "gradient")
# What the monitor's yield is, to which its threshold or baseline rule applies (components.monitor).
YIELD_MODES = ("confidence", "pass_rate", "estimated_accuracy", "accuracy")
# Which signal retrains (components.drift): the yield, input drift, or both (either one trips it).
TRIGGERS = ("yield", "drift", "both")
# Fewer predictions of one slice (line, camera) in a window are too noisy to judge (yield sd ~0.07).
MIN_SLICE_RECORDS = 30


class ConfigError(ValueError):
    """A configuration file or value is wrong; the message names the file and the key."""


@dataclass(frozen=True)
class PipelineConfig:
    yield_threshold: float | None = 0.7
    recent_window: int = 300
    yield_drop_tolerance: float = 0.05
    yield_floor: float = 0.6
    yield_confidence: float = 0.9
    yield_mode: str = "confidence"
    ok_class: str | None = None
    trigger: str = "both"
    drift_level: float = 0.01
    drift_permutations: int = 500
    merge_previous: bool = True
    previous_per_class: int = 1000
    min_samples: int = 50
    confidence_threshold: float = 0.7
    val_ratio: float = 0.2
    consensus_batch_size: int = 256
    new_sample_repeat: int = 3
    train_epochs: int = 60
    train_max_seconds: float = 120.0
    train_patience: int = 8
    warm_start: bool = True
    champion_augment: float = 0.0
    champion_family: str = "resnet"
    b1_family: str = "dilated"
    b2_family: str = "gradient"
    seed: int = 0
    min_improvement: float = 0.01
    max_golden_regression: float = 0.02
    min_holdout_per_class: int = 2
    evidence_level: float = 0.05
    min_pseudo_label_precision: float = 0.9
    min_audited_parts: int = 20
    keep_versions: int = 3
    registry_keep_versions: int = 10
    schedule: str = "0 * * * *"
    run_every_predictions: int = 0

    def __post_init__(self) -> None:
        for field in fields(self):
            _check_type(field.name, getattr(self, field.name), field.type)
        for name in ("yield_drop_tolerance", "yield_floor", "yield_confidence",
                     "confidence_threshold", "max_golden_regression", "champion_augment",
                     "min_pseudo_label_precision"):
            _check_range(name, getattr(self, name), 0.0, 1.0)
        if self.yield_threshold is not None:
            _check_range("yield_threshold", self.yield_threshold, 0.0, 1.0)
        _check_range("val_ratio", self.val_ratio, 0.0, 0.9)
        _check_range("min_improvement", self.min_improvement, -1.0, 1.0)
        if not 0.0 < self.evidence_level <= 1.0:
            raise ConfigError(f"evidence_level must be in (0.0, 1.0], got {self.evidence_level}")
        if self.yield_mode not in YIELD_MODES:
            raise ConfigError(f"yield_mode must be one of {', '.join(YIELD_MODES)}, got {self.yield_mode!r}")
        if self.yield_mode == "pass_rate" and not self.ok_class:
            raise ConfigError("yield_mode pass_rate needs ok_class: the class name that means a good part")
        if self.trigger not in TRIGGERS:
            raise ConfigError(f"trigger must be one of {', '.join(TRIGGERS)}, got {self.trigger!r}")
        if not 0.0 < self.drift_level < 1.0:
            raise ConfigError(f"drift_level must be in (0.0, 1.0), got {self.drift_level}")
        for name in ("champion_family", "b1_family", "b2_family"):
            if getattr(self, name) not in MODEL_FAMILIES:
                raise ConfigError(f"{name} must be one of {', '.join(MODEL_FAMILIES)}, got {getattr(self, name)!r}")
        if self.train_max_seconds < 0:
            raise ConfigError(f"train_max_seconds must be at least 0 (0: no cap), got {self.train_max_seconds}")
        if self.registry_keep_versions < self.keep_versions:
            raise ConfigError(f"registry_keep_versions ({self.registry_keep_versions}) must be at least keep_versions "
                              f"({self.keep_versions}): MLflow keeps every version TorchServe serves")
        if self.previous_per_class < 0:
            raise ConfigError(f"previous_per_class must be at least 0 (0: no cap), got {self.previous_per_class}")
        if self.run_every_predictions < 0:
            raise ConfigError(f"run_every_predictions must be at least 0 (0: off), got {self.run_every_predictions}")
        if self.min_holdout_per_class < 0:
            raise ConfigError(f"min_holdout_per_class must be at least 0, got {self.min_holdout_per_class}")
        for name in ("recent_window", "min_samples", "consensus_batch_size", "new_sample_repeat", "train_epochs", "train_patience",
                     "keep_versions", "min_audited_parts", "drift_permutations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")

    def with_overrides(self, **overrides: Any) -> "PipelineConfig":
        unknown = set(overrides) - {field.name for field in fields(self)}
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **overrides)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def default_config_text() -> str:
    """The shipped reference configuration, as YAML (a starting point for a user's own file)."""
    return importlib.resources.files("ctloop").joinpath(DEFAULT_CONFIG_NAME).read_text()


def load_config(path: str | Path | None = None) -> PipelineConfig:
    """Read and check a config file (None: the shipped defaults); unknown keys and bad values are
    errors naming the file."""
    try:
        if path is None:
            path, text = f"ctloop/{DEFAULT_CONFIG_NAME} (shipped defaults)", default_config_text()
        else:
            path, text = Path(path), Path(path).read_text()
        raw = yaml.safe_load(text) or {}
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config ({error.strerror})") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(raw).__name__}")
    try:
        return PipelineConfig().with_overrides(**raw)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error


def _check_type(name: str, value: Any, annotation: str) -> None:
    allowed = {"float": (int, float), "int": (int,), "bool": (bool,), "str": (str,)}
    base = annotation.replace(" | None", "")
    if value is None and "None" in annotation:
        return
    if isinstance(value, bool) and base != "bool":
        raise ConfigError(f"{name} must be of type {base}, got {value!r}")
    if not isinstance(value, allowed[base]):
        raise ConfigError(f"{name} must be of type {base}, got {value!r}")


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name} must be in [{low}, {high}], got {value}")
