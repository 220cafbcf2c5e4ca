"""Dataclass configs loaded from TOML with strict checks.

Unknown keys and wrong types are errors that name the file and the key (with a "did you
mean" for typos), so a config never half-applies.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import CurateError

C = TypeVar("C")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, where)
            except CurateError as e:
                errors.append(e)
        raise errors[0]
    if origin in (list, tuple):
        if isinstance(value, str) and origin is list:
            value = [value]
        if not isinstance(value, list | tuple):
            raise CurateError(f"key {key!r} must be a list, got {type(value).__name__} {value!r}", where=where)
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise CurateError(f"key {key!r} must be a table, got {type(value).__name__}", where=where)
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Path:
        if isinstance(value, str | os.PathLike):
            return Path(value)
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return from_dict(tp, value, where=where, prefix=f"{key}.")
    else:
        return value
    raise CurateError(
        f"key {key!r} must be {_type_name(tp)}, got {type(value).__name__} {value!r}", where=where
    )


def from_dict(cls: type[C], data: dict[str, Any], where: str = "config", prefix: str = "") -> C:
    """Build dataclass ``cls`` from ``data``, refusing unknown keys and wrong types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in data.items():
        name = k.replace("-", "_")
        if name not in fields:
            close = difflib.get_close_matches(name, list(fields), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(sorted(fields))}"
            raise CurateError(f"unknown key {prefix + k!r}", where=where, fix=hint)
        kwargs[name] = _coerce(v, hints[name], prefix + k, where)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise CurateError(f"incomplete config ({e})", where=where) from e


def load_toml(path: str | os.PathLike, cls: type[C], section: str | None = None) -> C:
    p = Path(path)
    if not p.exists():
        raise CurateError("config file not found", where=str(p))
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CurateError(f"not valid TOML ({e})", where=str(p)) from e
    if section:
        data = data.get(section, data)
    return from_dict(cls, data, where=str(p))


def to_dict(cfg: Any) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def merge(cfg: C, overrides: dict[str, Any]) -> C:
    """Apply CLI overrides (``None`` means "not given") on top of a config."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(cfg, **given)  # type: ignore[type-var]
