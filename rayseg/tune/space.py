"""Search-space files: YAML -> Ray Tune parameter space over dotted config keys (no Ray needed to validate).

A space file::

    objective: loss            # loss: the pre-training loss (min); miou: val mIoU of a short fine-tune (max)
    num_samples: 1             # samples per grid point (random distributions are drawn this many times)
    asha: {grace_period: 1, reduction_factor: 2}     # early stopping; `asha: null` turns it off
    finetune:                  # objective miou only: the fine-tune each trial runs after pre-training
      config: jobs/configs/finetune_synthetic.yaml
      overrides: [train.epochs=2]
    params:                    # any dotted config key -> one distribution
      pssl.bg_weight: {grid: [0.001, 0.01, 0.1, 1.0]}
      optim.lr: {loguniform: [0.001, 0.1]}
      mdp.temperature: {uniform: [0.05, 0.2]}
      mdp.top_k: {choice: [1, 3, 5]}

Every value a distribution can produce is checked against the config before Ray starts (grid and choice
values all; uniform and loguniform both bounds): an unknown key or a value the key does not accept is one
:class:`~rayseg.config.ConfigError` line naming the space file and the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayseg.config import Config, ConfigError, config_from_dict, read_yaml

__all__ = ["DISTRIBUTIONS", "OBJECTIVES", "Param", "SearchSpace", "load_space"]

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform")
#: objective -> (Tune metric name, mode)
OBJECTIVES = {"loss": ("loss/loss", "min"), "miou": ("miou", "max")}
TOP_KEYS = ("objective", "num_samples", "asha", "finetune", "params")


@dataclass
class Param:
    key: str           # dotted config key
    kind: str          # one of DISTRIBUTIONS
    values: list[Any]  # grid / choice: the values; uniform / loguniform: [low, high]

    def to_tune(self):
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        low, high = self.values
        return tune.uniform(low, high) if self.kind == "uniform" else tune.loguniform(low, high)

    def candidates(self) -> list[Any]:
        """Values to validate against the config: all of a grid / choice, both bounds of a range."""
        return list(self.values)


@dataclass
class SearchSpace:
    path: str
    params: list[Param]
    objective: str = "loss"
    num_samples: int = 1
    asha: dict[str, Any] | None = field(default_factory=lambda: {"grace_period": 1, "reduction_factor": 2})
    finetune_config: str = ""
    finetune_overrides: list[str] = field(default_factory=list)

    @property
    def metric(self) -> str:
        return OBJECTIVES[self.objective][0]

    @property
    def mode(self) -> str:
        return OBJECTIVES[self.objective][1]

    def param_space(self) -> dict[str, Any]:
        """``{"params": {dotted key: Tune distribution}}`` for ``Tuner(param_space=...)``."""
        return {"params": {p.key: p.to_tune() for p in self.params}}

    def to_dict(self) -> dict[str, Any]:
        return {"objective": self.objective, "num_samples": self.num_samples, "asha": self.asha,
                "finetune": {"config": self.finetune_config, "overrides": self.finetune_overrides},
                "params": {p.key: {p.kind: p.values} for p in self.params}}


def _parse_param(where: str, key: str, spec: Any) -> Param:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: params.{key}: expected one of {{{', '.join(DISTRIBUTIONS)}: ...}}, got {spec!r}")
    (kind, values), = spec.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: params.{key}: unknown distribution {kind!r} (known: {', '.join(DISTRIBUTIONS)})")
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: params.{key}.{kind}: expected a non-empty list, got {values!r}")
    if kind in ("uniform", "loguniform"):
        if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"{where}: params.{key}.{kind}: expected [low, high] numbers, got {values!r}")
        low, high = float(values[0]), float(values[1])
        if not low < high:
            raise ConfigError(f"{where}: params.{key}.{kind}: need low < high, got {values!r}")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{where}: params.{key}.loguniform: bounds must be > 0, got {values!r}")
        values = [low, high]
    return Param(key=key, kind=kind, values=values)


def _check_values(where: str, base: dict[str, Any], param: Param) -> None:
    """Apply each candidate value to the base config: the config's own validation speaks for the key."""
    import copy

    from rayseg.config import set_dotted

    for value in param.candidates():
        tree = copy.deepcopy(base)
        try:
            set_dotted(tree, param.key, value)
            cfg = config_from_dict(tree)
        except ConfigError as exc:
            raise ConfigError(f"{where}: params.{param.key} = {value!r}: {exc}") from None
        if param.kind in ("uniform", "loguniform") and isinstance(_get_dotted(cfg, param.key), (bool, str)):
            raise ConfigError(f"{where}: params.{param.key}: {param.kind} needs a numeric key")


def _get_dotted(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


SHIPPED_SPACES = Path(__file__).resolve().parents[2] / "tune_spaces"


def load_space(path: str | os.PathLike, base: Config) -> SearchSpace:
    """Read and validate the space file ``path`` against the base config ``base``."""
    where = str(path)
    if not Path(path).is_file():
        shipped = sorted(str(p.relative_to(SHIPPED_SPACES.parent)) for p in SHIPPED_SPACES.glob("*.yaml"))
        listing = f"shipped: {', '.join(shipped)}" if shipped else "see tune_spaces/ in the rayseg repository"
        raise ConfigError(f"search space not found: {where} ({listing})", "--space")
    data = read_yaml(path)
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(TOP_KEYS)})")
    objective = data.get("objective", "loss")
    if objective not in OBJECTIVES:
        raise ConfigError(f"{where}: objective: {objective!r} is not one of {', '.join(OBJECTIVES)}")
    num_samples = data.get("num_samples", 1)
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ConfigError(f"{where}: num_samples: expected an integer >= 1, got {num_samples!r}")
    asha = data.get("asha", {"grace_period": 1, "reduction_factor": 2})
    if asha is not None:
        if not isinstance(asha, dict) or set(asha) - {"grace_period", "reduction_factor"}:
            raise ConfigError(f"{where}: asha: expected {{grace_period: N, reduction_factor: M}} or null, got {asha!r}")
        asha = {"grace_period": int(asha.get("grace_period", 1)), "reduction_factor": int(asha.get("reduction_factor", 2))}
        if asha["grace_period"] < 1 or asha["reduction_factor"] < 2:
            raise ConfigError(f"{where}: asha: need grace_period >= 1 and reduction_factor >= 2, got {asha}")
    params_data = data.get("params")
    if not isinstance(params_data, dict) or not params_data:
        raise ConfigError(f"{where}: params: expected a mapping of dotted config keys to distributions")
    base_tree = base.to_dict()
    params = [_parse_param(where, str(k), v) for k, v in params_data.items()]
    for param in params:
        _check_values(where, base_tree, param)
    finetune = data.get("finetune") or {}
    if not isinstance(finetune, dict) or set(finetune) - {"config", "overrides"}:
        raise ConfigError(f"{where}: finetune: expected {{config: FILE, overrides: [key=value, ...]}}")
    ft_config, ft_overrides = str(finetune.get("config", "") or ""), list(finetune.get("overrides", []) or [])
    if ft_config and not Path(ft_config).is_file():
        raise ConfigError(f"{where}: finetune.config: file not found: {ft_config}")
    return SearchSpace(path=where, params=params, objective=objective, num_samples=num_samples, asha=asha,
                       finetune_config=ft_config, finetune_overrides=[str(o) for o in ft_overrides])
