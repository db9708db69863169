"""The building blocks of the config schema: :class:`ConfigError`, :func:`setting` and :class:`Section`.

A section is a dataclass deriving from :class:`Section`. Each field is declared with :func:`setting`, whose
metadata carries the key's one-line ``doc`` (``rayseg config --explain``), its allowed ``choices`` and its
bounds (``ge``, ``gt``, ``le``, ``lt``). Constructing a section checks every declared rule and then the
section's own :meth:`Section.check` (rules that span fields), so a section cannot exist with a bad value,
whether it comes from YAML or from library code. Errors name the field; the loader prefixes the dotted
path of the section (``label.explainer.samples: must be >= 1, got 0``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import field
from typing import Any

from rayseg import storage


class ConfigError(ValueError):
    """A configuration problem, reported to the user as one line ``<key>: <detail>`` (or just the detail)."""

    def __init__(self, detail: str, key: str = ""):
        super().__init__(f"{key}: {detail}" if key else detail)
        self.key, self.detail = key, detail

    def under(self, prefix: str) -> "ConfigError":
        """The same error with its key inside the section ``prefix`` (``"label."``)."""
        return ConfigError(self.detail, prefix + self.key) if self.key else self


_BOUNDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
           "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def setting(default: Any, doc: str = "", choices: tuple | None = None, *, ge: float | None = None,
            gt: float | None = None, le: float | None = None, lt: float | None = None,
            path: str | None = None) -> Any:
    """A config field: its default, one line of doc, and the rules its value must follow. ``path`` marks a location: ``"input"``
    and ``"spec"`` (each list item ``KIND:PATH``) are made absolute when the section is built
    (:func:`absolute_location`); an ``"output"`` is made absolute where the command uses it (:func:`output_location`),
    so that an output a command does not write is never refused."""
    meta: dict[str, Any] = {"doc": doc}
    if path is not None:
        if path not in PATH_KINDS:
            raise ValueError(f"path must be one of {PATH_KINDS}, got {path!r}")
        meta["path"] = path
    if choices is not None:
        meta["choices"] = choices
    meta.update({name: bound for name, bound in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt))
                 if bound is not None})
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def choices_of(f: dataclasses.Field) -> tuple | None:
    return f.metadata.get("choices")


def rules_of(f: dataclasses.Field) -> str:
    """The declared rules of a field as text (``one of a, b``, ``>= 1``) for ``--explain``."""
    parts = [f"{_BOUNDS[name][0]} {f.metadata[name]}" for name in _BOUNDS if name in f.metadata]
    choices = choices_of(f)
    if choices:
        parts.insert(0, f"one of {', '.join(map(str, choices))}")
    return ", ".join(parts)


def check_field(f: dataclasses.Field, value: Any) -> None:
    """Raise ``ConfigError(key=f.name)`` when ``value`` breaks the field's declared choices or bounds."""
    choices = choices_of(f)
    if choices is not None and value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{value!r} is not one of {', '.join(map(str, choices))}{hint}", f.name)
    for name, (symbol, holds) in _BOUNDS.items():
        bound = f.metadata.get(name)
        if bound is None or isinstance(value, (list, dict, str)):
            continue
        if isinstance(value, float) and math.isnan(value) or not holds(value, bound):
            raise ConfigError(f"must be {symbol} {bound}, got {value}", f.name)


PATH_KINDS = ("input", "output", "spec")


BASE_DIR_ENV = "RAYSEG_BASE_DIR"


def in_ray_job() -> bool:
    """True in the entrypoint of ``ray job submit`` (its supervisor sets the job's config in the environment), where
    the working directory is the job's package folder, deleted with the Ray session."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def _from_base(value: str) -> str:
    """``value`` absolute: ``~`` expanded, a relative path joined to ``$RAYSEG_BASE_DIR`` (else the current
    directory)."""
    return os.path.abspath(os.path.join(os.environ.get(BASE_DIR_ENV) or os.getcwd(), os.path.expanduser(value)))


def absolute_location(value: str) -> str:
    """An input location as an absolute path; URIs and empty values unchanged. Each process that reads a config
    resolves relative paths against its own working directory, and Ray workers have their own: so every input is
    made absolute where the config is built, on the driver."""
    if not value or storage.is_uri(value):
        return value
    return _from_base(value)


def output_location(value: str, name: str) -> str:
    """An output location as the command will write it: absolute, or a URI. Relative inside a Ray job without
    ``$RAYSEG_BASE_DIR`` it is refused: it would be written into the job's temporary package folder, deleted with
    the Ray session."""
    if not value or storage.is_uri(value):
        return value
    if not os.path.isabs(os.path.expanduser(value)) and in_ray_job() and not os.environ.get(BASE_DIR_ENV):
        raise ConfigError(f"relative path {value!r} inside a Ray job would be written into the job's temporary "
                          f"package folder, deleted with the Ray session; give an absolute path on a filesystem "
                          f"every node mounts or an object-store URI, or set {BASE_DIR_ENV} (a shared folder "
                          f"relative paths are resolved against) in the job's runtime_env env_vars", name)
    return _from_base(value)


def _absolute_spec(item: str) -> str:
    """``KIND:PATH`` with PATH absolute; ``synthetic:DOMAIN`` and items without a path unchanged."""
    kind, sep, arg = str(item).partition(":")
    if not sep or not arg or kind.strip() == "synthetic":
        return item
    return f"{kind}:{absolute_location(arg.strip())}"


class Section:
    """Base of every config section (a dataclass): makes its locations absolute, checks declared rules, then
    :meth:`check`, on creation."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Section):
                continue  # checked when it was created
            kind = f.metadata.get("path")
            if kind == "spec" and isinstance(value, list):
                value = [_absolute_spec(item) for item in value]
            elif kind == "input" and isinstance(value, str):
                value = absolute_location(value)
            if kind:
                setattr(self, f.name, value)
            check_field(f, value)
        self.check()

    def check(self) -> None:
        """Rules that span several fields of this section; raise ``ConfigError(detail, key)``."""


def require(ok: bool, key: str, detail: str) -> None:
    """Raise ``ConfigError(detail, key)`` unless ``ok``."""
    if not ok:
        raise ConfigError(detail, key)
