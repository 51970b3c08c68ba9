"""Stage configuration: one dataclass per stage, loaded from YAML and overridden with `--set key=value`.

Defaults in every stage's dataclass equal the paper's choices; YAML files and `--set` are the escape.
Unknown keys and values of the wrong type are errors that name the key, never silently ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from hf_pipeline.errors import PipelineError

C = TypeVar("C")


def config_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain, JSON-serialisable dict of a (possibly nested) config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def config_hash(*parts: Any, length: int = 10) -> str:
    """Short stable hash of JSON-serialisable parts (stage name, config, pinned inputs)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check/convert one value against a field's type annotation, naming the key on failure."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except PipelineError as e:
                errors.append(str(e))
        raise PipelineError(f"config key '{key}' has value {value!r}, which is not of type {_type_name(annotation)}.")
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, Mapping):
            raise PipelineError(f"config key '{key}' must be a mapping of {annotation.__name__} fields, got {value!r}.")
        return build_config(annotation, value, prefix=f"{key}.")
    if origin in (list, tuple) or annotation in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise PipelineError(f"config key '{key}' must be a list, got {value!r}.")
        item_type = args[0] if args else Any
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, Mapping):
            raise PipelineError(f"config key '{key}' must be a mapping, got {value!r}.")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise PipelineError(f"config key '{key}' must be one of {list(args)}, got {value!r}.")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise PipelineError(f"config key '{key}' must be true or false, got {value!r}.")
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        # YAML 1.1 (PyYAML) reads `3e-3` as a string: it wants `3.0e-3`. Users write the former.
        try:
            return float(value)
        except ValueError:
            pass
    if annotation is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if annotation is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(annotation, type) and isinstance(value, annotation):
        return value
    raise PipelineError(f"config key '{key}' has value {value!r}, which is not of type {_type_name(annotation)}.")


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def build_config(cls: type[C], values: Mapping[str, Any], prefix: str = "") -> C:
    """Instantiate config dataclass `cls` from a mapping, rejecting unknown keys by name."""
    hints = typing.get_type_hints(cls)
    fields = config_fields(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise PipelineError(
            f"unknown config key '{prefix}{unknown[0]}' for {cls.__name__} (known keys: {', '.join(sorted(fields))})."
        )
    kwargs = {name: _coerce(v, hints[name], prefix + name) for name, v in values.items()}
    return cls(**kwargs)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["a=1", "b.c=x"]` -> nested dict; values parsed as YAML scalars/lists so `--set k=0.5` is a float."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise PipelineError(f"--set expects key=value, got '{pair}'.")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"config file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise PipelineError(f"config file {path} is not valid YAML: {e}.") from None
    if not isinstance(data, dict):
        raise PipelineError(f"config file {path} must hold a mapping of keys to values.")
    return data


def deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(merged.get(k), dict):
            merged[k] = deep_merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def option_flags(cls: type) -> dict[str, dataclasses.Field]:
    """flag name -> field, for every field of an options dataclass that is a flag (metadata `flag` not False)."""
    return {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("flag", True)}


def add_option_flags(parser: argparse.ArgumentParser, cls: type, help_prefix: str = "") -> None:
    """A flag per field of an options dataclass (`--num-shards` for `num_shards`): its type from the annotation (a
    bool is a switch), its help and default from the field."""
    hints, defaults = typing.get_type_hints(cls), cls()
    for name, f in option_flags(cls).items():
        flag, default, doc = "--" + name.replace("_", "-"), getattr(defaults, name), help_prefix + f.metadata.get("help", "")
        kind = next((t for t in (bool, int, float) if t in (hints[name], *typing.get_args(hints[name]))), str)
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=None, help=f"{doc} (default: {default})")
        else:
            parser.add_argument(flag, type=kind, default=None, help=f"{doc} (default: {default})")


def option_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The options given on the command line, by field name."""
    return {name: getattr(args, name) for name in option_flags(cls) if getattr(args, name) is not None}
