"""What every config-driven command shares: ``--config``, ``--address`` and dotted overrides -> a checked Config."""

from __future__ import annotations

import argparse

from rayseg.config import Config, load_config
from rayseg.config.sections import METHOD_NAMES


def add_config_args(p: argparse.ArgumentParser, method: bool = False) -> None:
    if method:
        p.add_argument("--method", choices=METHOD_NAMES, help="shortcut for the override method=NAME")
    p.add_argument("--config", help="YAML config file (defaults apply to missing keys)")
    p.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local cluster)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.epochs=3")


def add_method_config_args(p: argparse.ArgumentParser) -> None:
    """:func:`add_config_args` with ``--method`` (pretrain, sweep)."""
    add_config_args(p, method=True)


def resolve(args: argparse.Namespace) -> Config:
    """The config file with the overrides (and ``--method``) applied, every key and input checked."""
    overrides = list(args.overrides)
    if getattr(args, "method", None):
        overrides.append(f"method={args.method}")
    return load_config(args.config, overrides)
