"""``rayseg config``: print the resolved config, or every key with its type, default, rules and meaning."""

from __future__ import annotations

import argparse

import yaml

from rayseg.commands.args import add_config_args, resolve
from rayseg.config import explain_sections


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--explain", nargs="?", const="", default=None, metavar="SECTION",
                   help="list every key (of one SECTION, e.g. label) with its type, default and meaning")
    add_config_args(p)


def run(args: argparse.Namespace) -> int:
    if args.explain is not None:
        print("\n".join(explain_sections(args.explain)))
    else:
        print(yaml.safe_dump(resolve(args).to_dict(), sort_keys=False), end="")
    return 0
