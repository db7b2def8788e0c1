"""The README lists every field of the job spec with its default and bounds, from the schema.

The table between ``<!-- spec-table -->`` and ``<!-- /spec-table -->`` in README.md is
rendered from ``JobSpec.model_json_schema()``; this test fails when a field or a bound changes
and the README was not updated. To update it: ``python tests/unit/test_readme_spec.py --write``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
START, END = "<!-- spec-table -->\n", "<!-- /spec-table -->\n"


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _bounds(schema: dict[str, Any]) -> str:
    """'0 < x ≤ 100', 'one of a, b', 'list of 1–16 of 1 ≤ x ≤ 4,096', … from a property."""
    if "enum" in schema:
        return "one of " + ", ".join(f"`{v}`" for v in schema["enum"])
    if "anyOf" in schema:
        options = [_bounds(s) for s in schema["anyOf"] if s.get("type") != "null"]
        return " or ".join(o for o in options if o) + " or null"
    if schema.get("type") == "array":
        inner = _bounds(schema.get("items", {}))
        count = f"{schema.get('minItems', 0)}–{schema.get('maxItems', '∞')} items"
        return f"{count}, each {inner}" if inner else count
    low = (
        f"{_number(schema['minimum'])} ≤ "
        if "minimum" in schema
        else f"{_number(schema['exclusiveMinimum'])} < "
        if "exclusiveMinimum" in schema
        else ""
    )
    high = (
        f" ≤ {_number(schema['maximum'])}"
        if "maximum" in schema
        else f" < {_number(schema['exclusiveMaximum'])}"
        if "exclusiveMaximum" in schema
        else ""
    )
    length = ""
    if "maxLength" in schema:
        length = f"{schema.get('minLength', 0)}–{schema['maxLength']} characters"
    return f"{low}x{high}" if low or high else length


def spec_table() -> str:
    from bncore.spec import JobSpec

    schema = JobSpec.model_json_schema()
    defaults = JobSpec().model_dump()
    defs = schema.get("$defs", {})
    rows = ["| field | default | allowed |", "|---|---|---|"]

    def walk(properties: dict[str, Any], prefix: str) -> None:
        for name, prop in properties.items():
            ref = prop.get("$ref") or next(
                (s.get("$ref") for s in prop.get("anyOf", []) if "$ref" in s), None
            )
            if ref:
                walk(defs[ref.rsplit("/", 1)[-1]]["properties"], f"{prefix}{name}.")
                continue
            value: Any = defaults
            for part in f"{prefix}{name}".split("."):
                value = value[part]
            default = json.dumps(value)
            rows.append(f"| `{prefix}{name}` | `{default}` | {_bounds(prop) or 'any'} |")

    walk(schema["properties"], "")
    return "\n".join(rows) + "\n"


def readme_table() -> str:
    text = README.read_text()
    return text[text.index(START) + len(START) : text.index(END)]


def test_readme_lists_every_spec_field_with_its_bounds() -> None:
    assert readme_table() == spec_table(), (
        "README's job-spec table is out of date: python tests/unit/test_readme_spec.py --write"
    )


def test_the_table_names_the_bounds_the_api_enforces() -> None:
    table = spec_table()
    assert "| `steps` | `3000` | 1 ≤ x ≤ 200,000 |" in table
    assert "| `optimizer.lr` | `0.5` | 0 < x ≤ 100 |" in table


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    text = README.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(head + START + spec_table() + END + tail)
