"""Reading a config: YAML file + dotted ``key=value`` overrides -> a checked :class:`Config`.

Values are checked against each field's annotation here (``_coerce``); the sections check their own rules
when they are built (:mod:`rayseg.config.fields`), and :func:`validate` adds what spans sections (URIs) and the
inputs of a training run that must exist on the driver.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import yaml

from rayseg import storage
from rayseg.config.fields import ConfigError, rules_of
from rayseg.config.sections import Config, ExplainerSection

# Keys that moved into a sub-section: an old config names them, the error says where they went.
MOVED_KEYS = {f"label.{f.name}": f"label.explainer.{f.name}" for f in dataclasses.fields(ExplainerSection)
              if f.name != "method"} | {"label.method": "label.explainer.method"}



def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in that type (int -> float allowed)."""
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)[:1]
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        k_tp, v_tp = typing.get_args(tp)
        return {_coerce(k, k_tp, f"{key} key"): _coerce(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _suggest(name: str, options: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    if close:
        return f" (did you mean '{prefix}{close[0]}'?)"
    return f" (known: {', '.join(prefix + o for o in sorted(options))})"


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """The section ``cls`` from ``data``: unknown keys and wrong types fail here, each section's own rules when
    it is created; every error names the dotted key."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            moved = MOVED_KEYS.get(f"{prefix}{key}")
            if moved:
                raise ConfigError(f"unknown key '{prefix}{key}': it moved to '{moved}'")
            raise ConfigError(f"unknown key '{prefix}{key}'{_suggest(str(key), names, prefix)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        key, tp, value = prefix + f.name, hints[f.name], data[f.name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a section (mapping), got {value!r}")
            kwargs[f.name] = _build(tp, value, key + ".")
            continue
        kwargs[f.name] = _coerce(value, tp, key)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise e.under(prefix) from None


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree[a][b][c] = value`` for ``dotted = "a.b.c"``, creating sections on the way."""
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``'train.epochs=3'`` -> ``('train.epochs', 3)``; the value is read as YAML (numbers, lists, bools)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' is not of the form key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections")
    return data


def config_from_dict(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    tree = copy.deepcopy(data)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(tree, key, value)
    cfg = _build(Config, tree, "")
    validate(cfg)
    return cfg


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read ``path`` (or the defaults when None), apply ``overrides`` and validate."""
    return config_from_dict(read_yaml(path) if path else {}, overrides)


# Keys whose value may be an object-store URI (rayseg.storage); every other path is read by many processes
# through plain file APIs and must be on a filesystem every node mounts.
URI_KEYS = ("run.storage", "label.output", "pssl.labels", "model.init_weights")
URI_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs", "file")


# Query options of pyarrow's filesystems (and common spellings) that carry a secret.
SECRET_OPTIONS = ("access_key", "secret_key", "session_token", "account_key", "sas_token", "access_token",
                  "client_secret", "password", "token", "credentials")


def _secrets_in(uri: str) -> tuple[list[str], str]:
    """(what in ``uri`` is a credential, ``uri`` with each one replaced by ``***``)."""
    split = urlsplit(uri)
    found, netloc = [], split.netloc
    if "@" in netloc:
        found.append("user info before @")
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = []
    for name, value in parse_qsl(split.query, keep_blank_values=True):
        if name.lower() in SECRET_OPTIONS:
            found.append(name)
            value = "***"
        query.append(f"{name}={value}")
    return found, urlunsplit((split.scheme, netloc, split.path, "&".join(query), ""))


def _check_uris(tree: dict[str, Any], prefix: str = "") -> None:
    """A ``scheme://`` value is accepted for URI_KEYS with a scheme pyarrow.fs opens; anywhere else it would
    become a local folder named ``s3:`` without a word, so it is one ConfigError line. Credentials in a URI are
    refused (locations are printed and written into config.yaml and summaries); the error shows the URI with them
    masked."""
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            _check_uris(value, dotted + ".")
            continue
        for item in value if isinstance(value, list) else [value]:
            embedded = re.search(r"[A-Za-z][A-Za-z0-9+.-]*://", item) if isinstance(item, str) else None
            if embedded is None:
                continue
            found, masked = _secrets_in(item[embedded.start():])  # also after ARCH: in label.members
            if found:
                raise ConfigError(f"{masked}: credentials in a URI ({', '.join(found)}) are refused, because "
                                  f"locations are printed and written into config.yaml and summaries; give them "
                                  f"through each node's environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                                  f"GOOGLE_APPLICATION_CREDENTIALS, ...) or an instance role", dotted)
            if not storage.is_uri(item):
                continue
            if dotted not in URI_KEYS:
                raise ConfigError(f"{dotted}: {item}: URIs are accepted for {', '.join(URI_KEYS)} only; put this "
                                  f"input on a filesystem every node mounts (NFS, EFS, or a bucket through s3fs)")
            scheme = item.split("://", 1)[0].lower()
            if scheme not in URI_SCHEMES:
                raise ConfigError(f"{dotted}: {item}: unknown scheme {scheme}://, expected one of "
                                  f"{', '.join(s + '://' for s in URI_SCHEMES)}")


def validate(cfg: Config) -> None:
    """What spans sections (URIs anywhere) and the inputs of a training run, which must exist on the driver
    (:meth:`Config.check_inputs`). Each raises a one-line ConfigError."""
    _check_uris(cfg.to_dict())
    cfg.check_inputs()


def explain(cls: type = Config, prefix: str = "") -> list[str]:
    """One line per key: ``dotted.key (type, default, rules): doc``."""
    lines = []
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines += explain(tp, f"{prefix}{f.name}.")
            continue
        rules = rules_of(f)
        lines.append(f"{prefix}{f.name} ({_type_name(tp)}, default {getattr(defaults, f.name)!r}"
                     f"{'; ' + rules if rules else ''}): {f.metadata.get('doc', '')}")
    return lines


def explain_sections(section: str = "") -> list[str]:
    """:func:`explain` grouped under one header per section (``[label] <its doc>``), keys without a section
    (``method``) first; only ``section`` when given (``ConfigError`` naming the sections otherwise)."""
    hints = typing.get_type_hints(Config)
    sections = {f.name: hints[f.name] for f in dataclasses.fields(Config) if dataclasses.is_dataclass(hints[f.name])}
    if section and section not in sections:
        close = difflib.get_close_matches(section, sections, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"no section '{section}'{hint}; the sections are {', '.join(sections)}", "--explain")
    lines = [] if section else [line for line in explain() if "." not in line.split(" ", 1)[0]]
    for name, cls in sections.items():
        if section and name != section:
            continue
        doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        lines += ["", f"[{name}] {doc}" if doc and not doc.startswith(cls.__name__ + "(") else f"[{name}]"]
        lines += [f"  {line}" for line in explain(cls, f"{name}.")]
    return lines


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (what the run actually used) to a path or URI, atomically."""
    storage.write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
