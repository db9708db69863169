"""The ``rayseg`` command (also ``python -m rayseg`` and the ``jobs/*.py`` entry points of ``ray job submit``).

Every command reads one YAML config plus dotted ``key=value`` overrides and checks them (config keys, types,
files, dataset layout, weight files against the model) before any Ray work starts. Expected failures print one
``error: ...`` line: exit code 2 for configuration problems, 1 for failures while running.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from rayseg.config import Config, ConfigError, explain, load_config

EXIT_CONFIG = 2
EXIT_FAILED = 1


class CommandError(RuntimeError):
    """An expected failure while running; printed as one line."""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (defaults apply to missing keys)")
    p.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local cluster)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.epochs=3")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayseg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="pre-train a segmentation network with one method")
    p.add_argument("--method", help="shortcut for the override method=NAME")
    _add_config_args(p)
    p = sub.add_parser("finetune", help="fine-tune (optionally from pre-trained weights) and evaluate mIoU")
    _add_config_args(p)
    p = sub.add_parser("train-classifiers", help="train the classifiers of a PSSL explanation ensemble")
    _add_config_args(p)
    p = sub.add_parser("label", help="pseudo-label an ImageFolder with an explanation ensemble (Ray Data)")
    _add_config_args(p)
    p = sub.add_parser("show-labels", help="render a PNG grid: image, decile heat map, pseudo-mask")
    p.add_argument("--labels", required=True,
                   help="label-version folder written by `rayseg label` (a path or an object-store URI)")
    p.add_argument("--images", default="", help="the labelled ImageFolder root")
    p.add_argument("--parquet", default="", help="or the labelled Parquet table of image bytes")
    p.add_argument("--out", default="labels.png", help="PNG file to write")
    p.add_argument("--count", type=int, default=8, help="images to show")
    p = sub.add_parser("sweep", help="Ray Tune search over config keys (one Train run per trial)")
    p.add_argument("--space", required=True, help="search-space YAML (see tune_spaces/)")
    p.add_argument("--method", help="shortcut for the override method=NAME")
    _add_config_args(p)
    p = sub.add_parser("report", help="transfer table and chart of fine-tune mIoU over starts, heads and seeds")
    p.add_argument("--storage", default="rayseg_runs/demo/full",
                   help="folder (or object-store URI) of tagged fine-tune runs")
    p.add_argument("--out", default="", help="where report.csv and report.png go (default: --storage)")
    p = sub.add_parser("demo", help="the whole pipeline on the embedded synthetic benchmark")
    p.add_argument("--quick", action="store_true", help="smaller budget (a smoke test of every step)")
    p.add_argument("--storage", default="rayseg_runs/demo", help="where the demo's runs go")
    p.add_argument("--address", help="Ray cluster to join (default: a local cluster)")
    p = sub.add_parser("config", help="print the resolved config, or every key with --explain")
    p.add_argument("--explain", action="store_true", help="list every key with its type, default and meaning")
    _add_config_args(p)
    return parser


def resolve(args: argparse.Namespace, command: str) -> Config:
    overrides = list(args.overrides)
    if getattr(args, "method", None):
        overrides.append(f"method={args.method}")
    cfg = load_config(args.config, overrides)
    if command == "finetune" and cfg.method != "supervised":
        raise ConfigError(f"method: finetune trains with method 'supervised', got '{cfg.method}'")
    return cfg


def preflight(cfg: Config) -> None:
    """Build the training set and the model (with its init weights) on the driver, so that a missing folder,
    a wrong split file or weights that do not fit the model fail as one line before Ray starts."""
    from rayseg.methods import get_method
    from rayseg.models.weights import WeightsError

    method_cls = get_method(cfg.method)
    try:
        train_set = method_cls.train_dataset(cfg)
        if len(train_set) == 0:
            raise ConfigError(f"data: the training split '{cfg.data.train_split}' is empty")
        method = method_cls.from_config(cfg, train_set)
    except (FileNotFoundError, WeightsError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(str(e).splitlines()[0]) from None
    for module in method.modules():
        if getattr(module, "init_report", None) is not None:
            print(f"[rayseg] {module.init_report.summary()}", flush=True)


def root_cause(error: BaseException) -> str:
    """The innermost message of an exception chain (Ray wraps worker errors), as one line."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        nxt = error.__cause__ or getattr(error, "cause", None) or error.__context__
        if not isinstance(nxt, BaseException):
            break
        error = nxt
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}".strip()


def cmd_train(args: argparse.Namespace, command: str) -> int:
    from rayseg.engine.runner import train

    cfg = resolve(args, command)
    preflight(cfg)
    print(f"[rayseg] {command} {cfg.method}: run folder {cfg.run_dir(command)}", flush=True)
    summary = train(cfg, command, address=args.address)
    print_summary(command, cfg, summary)
    return 0


def print_summary(command: str, cfg: Config, summary: dict) -> None:
    from rayseg import storage
    from rayseg.engine.metrics import format_metrics_table

    run_dir = cfg.run_dir(command)
    rate = summary.get("images_per_s")
    print(f"[rayseg] done: {summary['steps']} steps, {rate:.1f} img/s" if rate else "[rayseg] done", flush=True)
    if summary.get("skipped_bad_samples"):
        print(f"[rayseg] skipped {summary['skipped_bad_samples']} bad samples (listed in "
              f"{storage.join(run_dir, 'bad_samples.txt')})")
    metrics_file = storage.join(run_dir, "metrics.json")
    if command == "finetune" and storage.is_file(metrics_file):
        print(format_metrics_table(json.loads(storage.read_text(metrics_file))))
    for name, path in summary["export"].items():
        print(f"[rayseg] exported {name}: {path}")


def cmd_train_classifiers(args: argparse.Namespace) -> int:
    from rayseg.labeling.train_members import format_members_table, member_config, train_members

    cfg = resolve(args, "train-classifiers")
    for arch in cfg.classifier.archs:
        preflight(member_config(cfg, arch))
    rows = train_members(cfg, address=args.address)
    print(format_members_table(rows))
    members = ", ".join(f"{r['arch']}:{r['weights']}" for r in rows)
    print(f"[rayseg] label with: label.members=[{members}]")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from rayseg.engine.runner import ensure_ray
    from rayseg.labeling.job import labeling_job
    from rayseg.labeling.pipeline import run_labeling, sized_for_cluster

    job = labeling_job(resolve(args, "label"))  # every check before Ray starts
    ensure_ray(args.address)  # before `import ray`: a local cluster is bound to 127.0.0.1 at import time
    import ray

    try:
        sized_for_cluster(job, ray.cluster_resources())  # fails here, as a config error, not in the pipeline
    except ValueError as e:
        raise ConfigError(str(e)) from None
    run_labeling(job)
    return 0


def cmd_show_labels(args: argparse.Namespace) -> int:
    from rayseg import storage
    from rayseg.labeling.show import show_labels

    if not storage.is_dir(args.labels):
        raise ConfigError(f"--labels: folder not found: {args.labels}")
    if bool(args.images) == bool(args.parquet):
        raise ConfigError("--images, --parquet: give exactly one (the labelled images)")
    path = show_labels(args.labels, args.images or None, args.out, count=args.count,
                       **({"parquet": args.parquet} if args.parquet else {}))
    print(f"[rayseg] wrote {path}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from rayseg.tune.space import load_space
    from rayseg.tune.sweep import run_sweep

    cfg = resolve(args, "sweep")
    space = load_space(args.space, cfg)  # every sampled value checked against the config before Ray starts
    preflight(cfg)
    run_sweep(cfg, space, address=args.address)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from rayseg.report import write_report

    out = write_report(args.storage, args.out or None)
    print(out["table"])
    print(f"[rayseg] wrote {out['csv']} and {out['png']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from rayseg.demo import run_demo

    run_demo(storage=args.storage, quick=args.quick, address=args.address)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    if args.explain:
        print("\n".join(explain()))
    else:
        print(yaml.safe_dump(resolve(args, "config").to_dict(), sort_keys=False), end="")
    return 0


def run_guarded(fn: Callable[[], int]) -> int:
    """Run ``fn``; expected failures become one ``error:`` line and an exit code."""
    from rayseg.data.errors import BadSampleError
    from rayseg.models.weights import WeightsError

    try:
        return fn()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except (CommandError, BadSampleError, WeightsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("error: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - Ray wraps worker exceptions; show the root cause in one line
        if type(e).__module__.startswith("ray"):
            print(f"error: training failed: {root_cause(e)}", file=sys.stderr)
            return EXIT_FAILED
        raise


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("pretrain", "finetune"):
        return run_guarded(lambda: cmd_train(args, args.command))
    if args.command == "train-classifiers":
        return run_guarded(lambda: cmd_train_classifiers(args))
    if args.command == "label":
        return run_guarded(lambda: cmd_label(args))
    if args.command == "show-labels":
        return run_guarded(lambda: cmd_show_labels(args))
    if args.command == "sweep":
        return run_guarded(lambda: cmd_sweep(args))
    if args.command == "report":
        return run_guarded(lambda: cmd_report(args))
    if args.command == "demo":
        return run_guarded(lambda: cmd_demo(args))
    return run_guarded(lambda: cmd_config(args))


if __name__ == "__main__":
    sys.exit(main())
