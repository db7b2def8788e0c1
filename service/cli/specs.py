"""From files and flags to job specs, checked here before any HTTP.

``submit`` and ``sweep`` read a base spec (.json/.yaml/.yml), apply flags or grid values at
dotted paths (``model.norm``), and validate with :class:`bncore.spec.JobSpec`, so a bad field
fails fast with its name and bound (exit 2) instead of a round trip to the server.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from bncore.spec import JobSpec
from service.cli.common import EXIT_INVALID, fail
from service.vocab import MAX_SWEEP_RUNS


def field_help(model: type[BaseModel], name: str, what: str) -> str:
    """An option's help from the spec field it sets: its choices or bounds, and its default,
    read from :mod:`bncore.spec` so the help never disagrees with the validation."""
    info = model.model_fields[name]
    limits = []
    if get_origin(info.annotation) is Literal:
        limits.append("one of " + ", ".join(str(choice) for choice in get_args(info.annotation)))
    lower = upper = ""
    for constraint in info.metadata:
        for attribute, symbol in (("gt", "<"), ("ge", "≤")):  # written left of the name
            if getattr(constraint, attribute, None) is not None:
                lower = f"{_number(getattr(constraint, attribute))} {symbol} "
        for attribute, symbol in (("lt", "<"), ("le", "≤")):
            if getattr(constraint, attribute, None) is not None:
                upper = f" {symbol} {_number(getattr(constraint, attribute))}"
    if lower or upper:
        limits.append(f"{lower}{name}{upper}")  # e.g. 0 < lr ≤ 100
    if info.default is not None and not info.is_required() and info.default_factory is None:
        limits.append(f"default {_number(info.default)}")
    return f"{what} ({'; '.join(limits)})." if limits else f"{what}."


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def load_spec_file(path: Path) -> dict[str, Any]:
    """A spec (or sweep base) from a .json, .yaml or .yml file."""
    if not path.is_file():
        fail(f"spec file not found: {path}", EXIT_INVALID)
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            fail(f"{path}: a spec file must end in .json, .yaml or .yml", EXIT_INVALID)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        fail(f"{path} is not valid {path.suffix.lstrip('.').upper()}: {exc}", EXIT_INVALID)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        fail(f"{path}: a spec must be a mapping of fields, got {type(data).__name__}", EXIT_INVALID)
    return data


def set_path(spec: dict[str, Any], path: str, value: Any) -> None:
    """spec["model"]["norm"] = value for path "model.norm" (creating parents)."""
    node = spec
    *parents, leaf = path.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


def parse_hidden(text: str) -> list[int]:
    """ "100,100,100" → [100, 100, 100]."""
    try:
        widths = [int(part) for part in text.replace(" ", "").strip("[]").split(",") if part]
    except ValueError:
        fail(f"--hidden must be comma-separated integers like 100,100,100, got {text!r}", 2)
    if not widths:
        fail("--hidden needs at least one layer width, e.g. 100,100,100", EXIT_INVALID)
    return widths


def validate_spec(spec: Mapping[str, Any], what: str = "spec") -> JobSpec:
    """JobSpec validation here, before any HTTP, with the failing fields named."""
    try:
        return JobSpec.model_validate(spec)
    except ValidationError as exc:
        fail(f"invalid {what}:\n" + format_validation_errors(exc), EXIT_INVALID)


def format_validation_errors(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"]) or "(spec)"
        got = f" (got {error['input']!r})" if "input" in error and error["loc"] else ""
        lines.append(f"  {loc}: {error['msg']}{got}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- grids


def split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets and quotes: "[1,2],[3]" → ["[1,2]", "[3]"]."""
    parts, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts]


def parse_scalar(text: str) -> Any:
    """A grid value: JSON where it parses (0.1, 3, true, [64,64]), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_grid(options: Sequence[str]) -> dict[str, list[Any]]:
    """["model.norm=none,batchnorm", "seed=0,1,2"] → {"model.norm": ["none", "batchnorm"], ...}."""
    grid: dict[str, list[Any]] = {}
    for option in options:
        path, sep, values = option.partition("=")
        path = path.strip()
        if not sep or not path or not values.strip():
            fail(f"--grid wants PATH=V1,V2,… (e.g. model.norm=none,batchnorm), got {option!r}", 2)
        if path in grid:
            fail(f"--grid {path} given twice", EXIT_INVALID)
        grid[path] = [parse_scalar(value) for value in split_top_level(values) if value]
    return grid


def validate_sweep(base: Mapping[str, Any], grid: Mapping[str, list[Any]]) -> int:
    """Validate every combination locally; returns how many runs the sweep makes."""
    count = 1
    for values in grid.values():
        count *= len(values)
    if count > MAX_SWEEP_RUNS:
        fail(f"the grid makes {count} runs, more than the limit of {MAX_SWEEP_RUNS}", 2)
    for combination in itertools.product(*grid.values()):
        spec = json.loads(json.dumps(base))
        for path, value in zip(grid, combination, strict=True):
            set_path(spec, path, value)
        label = ", ".join(f"{p}={v}" for p, v in zip(grid, combination, strict=True))
        validate_spec(spec, what=f"combination {label}")
    return count
