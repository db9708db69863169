"""``rayseg sweep``: a Ray Tune search over config keys, one Train run per trial (:mod:`rayseg.tune`)."""

from __future__ import annotations

import argparse

from rayseg.commands.args import add_method_config_args, resolve


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", required=True, help="search-space YAML (see tune_spaces/)")
    add_method_config_args(p)


def run(args: argparse.Namespace) -> int:
    from rayseg.commands.train import preflight
    from rayseg.tune.space import load_space
    from rayseg.tune.sweep import run_sweep

    cfg = resolve(args)
    space = load_space(args.space, cfg)  # every sampled value checked against the config before Ray starts
    preflight(cfg)
    run_sweep(cfg, space, address=args.address)
    return 0
