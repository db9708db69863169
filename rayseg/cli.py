"""The ``rayseg`` command (also ``python -m rayseg`` and the ``jobs/*.py`` entry points of ``ray job submit``).

A table of subcommands, each a module of :mod:`rayseg.commands`. Every command reads one YAML config plus dotted
``key=value`` overrides and checks them (config keys, types, files, dataset layout, weight files against the
model) before any Ray work starts. Expected failures print one ``error: ...`` line: exit code 2 for configuration
problems, 1 for failures while running.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Callable

from rayseg import __version__
from rayseg.config import ConfigError

EXIT_CONFIG = 2
EXIT_FAILED = 1

# name: (help, "module:function" that adds its arguments, "module:function" that runs it), in rayseg.commands.
# Argument functions live in light modules (commands/args.py), so `rayseg --help` imports no torch.
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "pretrain": ("pre-train a segmentation network with one method", "args:add_method_config_args",
                 "train:run_pretrain"),
    "finetune": ("fine-tune (optionally from pre-trained weights) and evaluate mIoU", "args:add_config_args",
                 "train:run_finetune"),
    "train-classifiers": ("train the classifiers of a PSSL explanation ensemble", "args:add_config_args",
                          "train_members:run"),
    "label": ("pseudo-label an ImageFolder with an explanation ensemble (Ray Data)", "args:add_config_args",
              "label:run"),
    "show-labels": ("render a PNG grid: image, decile heat map, pseudo-mask",
                    "show_labels:add_arguments", "show_labels:run"),
    "sweep": ("Ray Tune search over config keys (one Train run per trial)", "sweep:add_arguments", "sweep:run"),
    "report": ("transfer table and chart of fine-tune mIoU over starts, heads and seeds",
               "report:add_arguments", "report:run"),
    "claims": ("run the experiments behind the papers' claims and judge each with a 95% interval",
               "claims:add_arguments", "claims:run"),
    "demo": ("the whole pipeline on the embedded synthetic benchmark", "demo:add_arguments", "demo:run"),
    "config": ("print the resolved config, or every key with --explain", "config:add_arguments", "config:run"),
    "predict": ("masks and overlays of a trained model for an image or a folder (Ray Data)", "args:add_config_args",
                "predict:run"),
    "export": ("a trained model as TorchScript or ONNX, normalisation included, with its metadata",
               "export:add_arguments", "export:run"),
    "data": ("write the built-in synthetic benchmark as an ImageFolder and VOC trees", "data:add_arguments",
             "data:run"),
}


# Shown under each command's --help.
EXAMPLES: dict[str, list[str]] = {
    "pretrain": ["rayseg pretrain --config jobs/configs/pretrain_supervised.yaml train.epochs=3",
                 "rayseg pretrain --method pixcon pixcon.variant=sr data.kind=images data.root=/data/coco/train2017",
                 "rayseg pretrain --config jobs/configs/paper/mdp_four_datasets.yaml --address 10.0.0.1:6379"],
    "finetune": ["rayseg finetune --config jobs/configs/finetune_synthetic.yaml model.init_weights=RUN/export/model.pt",
                 "rayseg finetune --config jobs/configs/paper/finetune_voc.yaml data.root=/data/VOC2012 "
                 "run.tags={start: pssl, head: linear}"],
    "train-classifiers": ["rayseg train-classifiers classifier.archs=[resnet18,mobilenet_v3_small]",
                          "rayseg train-classifiers classifier.images=/data/imagenet/train classifier.epochs=30"],
    "label": ["rayseg label label.images=IMAGEFOLDER label.members=[resnet18:r18.pt,mobilenet_v3_small:mb.pt]",
              "rayseg label --config jobs/configs/paper/pssl_label_imagenet.yaml label.images=/data/imagenet/train"],
    "show-labels": ["rayseg show-labels --labels rayseg_labels/VERSION --images IMAGEFOLDER --out labels.png"],
    "sweep": ["rayseg sweep --space tune_spaces/mdp_temperature_topk.yaml --config jobs/configs/pretrain_mdp.yaml"],
    "report": ["rayseg report --storage rayseg_runs/demo/full",
               "rayseg report --storage runs/finetunes --by start,head --title 'VOC fine-tunes'"],
    "claims": ["rayseg claims", "rayseg claims --read --storage rayseg_runs/claims"],
    "demo": ["rayseg demo --quick", "rayseg demo"],
    "predict": ["rayseg predict predict.weights=RUN/export/model.pt predict.input=photo.jpg",
                "rayseg predict predict.weights=RUN/export/model.pt predict.input=/data/images predict.output=out "
                "eval.mode=slide eval.crop=512 eval.stride=341"],
    "export": ["rayseg export --weights rayseg_runs/finetune-supervised-1a2b3c4d/export/model.pt --format onnx",
               "rayseg export --weights RUN/export/model.pt --format torchscript --out model.ts"],
    "data": ["rayseg data synthetic --out synthetic_data",
             "rayseg data synthetic --out synthetic_data --num-images 512 --image-size 96 --domains A,C"],
    "config": ["rayseg config --config jobs/configs/pretrain_mdp.yaml train.epochs=3",
               "rayseg config --explain", "rayseg config --explain label"],
}

# Flags users bring from MMSegmentation / torchvision's references, and what rayseg does instead.
FAMILIAR_FLAGS = {
    "--work-dir": "run folders go to run.storage=DIR (and run.name=NAME)",
    "--work_dir": "run folders go to run.storage=DIR (and run.name=NAME)",
    "--resume": "re-run the same command: it resumes from its last checkpoint by itself",
    "--resume-from": "re-run the same command: it resumes from its last checkpoint by itself",
    "--cfg-options": "give overrides as key=value after the command, e.g. train.epochs=3",
    "--load-from": "use model.init_weights=FILE",
    "--seed": "use run.seed=N",
    "--gpus": "use train.use_gpu=true train.num_workers=N (one GPU per worker)",
    "--launcher": "rayseg runs on Ray: give --address HOST:PORT, or submit with `ray job submit`",
}


def familiar_flag(argv: list[str]) -> str | None:
    """A one-line pointer for the first flag of another tool in ``argv`` (None if there is none)."""
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag in FAMILIAR_FLAGS:
            return f"{flag} is not a rayseg flag; {FAMILIAR_FLAGS[flag]}"
    return None


def _command_function(spec: str) -> Callable:
    """``"label:run"`` -> :func:`rayseg.commands.label.run`."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(f"rayseg.commands.{module}"), name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"rayseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in SUBCOMMANDS.items():
        examples = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES.get(name, []))
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=examples,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _command_function(add_arguments)(p)
    return parser


def root_cause(error: BaseException) -> str:
    """The innermost message of an exception chain (Ray wraps worker errors), as one line."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        nxt = error.__cause__ or getattr(error, "cause", None) or error.__context__
        if not isinstance(nxt, BaseException):
            break
        error = nxt
    if isinstance(error, OSError) and error.filename:
        return describe_os_error(error)
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}".strip()


def describe_os_error(error: OSError) -> str:
    """``<path>: <reason>`` for an error of the operating system (no space, read-only, permission, a file where
    a folder should be); the message as it is otherwise (rayseg's own, or pyarrow's for object stores)."""
    if error.filename and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error)


# rayseg's library errors whose message is already the one line to print: (module, class). They are matched
# only if their module was imported (an error cannot come from a module that never ran), so that the CLI imports
# no torch before the config is checked.
ONE_LINE_ERRORS = (("rayseg.data.errors", "BadSampleError"), ("rayseg.labeling.shards", "CorruptShardError"),
                   ("rayseg.models.weights", "WeightsError"))


def _is_one_line_error(error: BaseException) -> bool:
    classes = (getattr(sys.modules.get(module), name, None) for module, name in ONE_LINE_ERRORS)
    return any(cls is not None and isinstance(error, cls) for cls in classes)


def run_guarded(fn: Callable[[], int]) -> int:
    """Run ``fn``; expected failures become one ``error:`` line and an exit code."""
    try:
        return fn()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except BrokenPipeError:  # `rayseg ... | head`: the reader is gone, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("error: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line for every expected failure, Ray's wrapped ones included
        if _is_one_line_error(e):
            print(f"error: {e}", file=sys.stderr)
        elif isinstance(e, OSError):  # a file not found, no space left, read-only, permission: the path and why
            print(f"error: {describe_os_error(e)}", file=sys.stderr)
        elif type(e).__module__.startswith("ray"):  # Ray wraps worker exceptions: their root cause
            print(f"error: training failed: {root_cause(e)}", file=sys.stderr)
        else:
            raise
        return EXIT_FAILED


class PlainText:
    """A text stream that drops ANSI colour codes: Ray colours the prefixes of the worker lines it forwards, which
    leaves escape codes in job logs and files (``ray job logs``, ``> out.txt``). It also drops the one ERROR line
    Ray Train 2.60 logs on every run that a user cannot act on (ray-project/ray#53727: its PreemptionWatcher actor
    has constructor arguments in the object store)."""

    CODES = re.compile(r"\x1b\[[0-9;]*m")
    UNACTIONABLE = re.compile(r"core_worker\.cc:\d+: Actor with class name: 'PreemptionWatcher' .* has constructor "
                              r"arguments in the object store")

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        if self.UNACTIONABLE.search(text):
            return len(text)
        return self.stream.write(self.CODES.sub("", text))

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def main(argv: list[str] | None = None) -> int:
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (s if s.isatty() or isinstance(s, PlainText) else PlainText(s) for s in streams)
    try:
        pointer = familiar_flag(sys.argv[1:] if argv is None else argv)
        if pointer:
            print(f"error: {pointer}", file=sys.stderr)
            return EXIT_CONFIG
        args = build_parser().parse_args(argv)
        run = _command_function(SUBCOMMANDS[args.command][2])
        return run_guarded(lambda: run(args))
    finally:
        sys.stdout, sys.stderr = streams


if __name__ == "__main__":
    sys.exit(main())
