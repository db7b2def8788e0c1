"""The committed reproduction report (docs/reproduction.md, .json, figures/) and what the
README says about it agree: every figure either links to exists and is a real, non-blank
image; every figure in docs/figures is used; the README's summary table has the report's
verdicts and only numbers the report measured."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
REPORT = DOCS / "reproduction.md"
HEADER = "| Experiment | Claim | Measured | Verdict |"


def image_links(markdown: Path) -> list[Path]:
    """The local images a markdown file shows, resolved against its folder."""
    text = markdown.read_text()
    return [markdown.parent / target for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)]


def summary_table(markdown: Path) -> dict[str, tuple[str, str]]:
    """The rows of the experiments table: title → (measured, verdict), links and bold off."""
    lines = markdown.read_text().splitlines()
    start = lines.index(HEADER) + 2  # past the header and its --- row
    rows: dict[str, tuple[str, str]] = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        title, _claim, measured, verdict = (c.strip() for c in line.strip("|").split("|"))
        title = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", title)
        rows[title] = (measured, verdict.replace("*", "").split(" ", 1)[1])
    return rows


def numbers(text: str) -> list[float]:
    return [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", text.replace("−", "-"))]


@pytest.mark.parametrize("markdown", [README, REPORT], ids=lambda p: p.name)
def test_every_figure_shown_is_a_real_image(markdown: Path) -> None:
    links = image_links(markdown)
    assert links, f"{markdown.name} shows no figure"
    for path in links:
        assert path.is_file(), f"{markdown.name} links to a missing {path}"
        pixels = matplotlib.image.imread(path)  # decodes every row: a truncated file fails
        height, width = pixels.shape[:2]
        assert width >= 400 and height >= 200, (path, pixels.shape)
        assert float(np.std(pixels[..., :3])) > 0.01, f"{path} is blank"


def test_the_report_json_lists_the_figures_the_report_shows() -> None:
    data = json.loads((DOCS / "reproduction.json").read_text())
    listed = {DOCS / f for experiment in data["experiments"] for f in experiment["figures"]}
    shown = set(image_links(REPORT))
    assert listed == shown
    assert set((DOCS / "figures").glob("*.png")) == shown  # nothing committed unused


def test_the_readme_summarizes_the_committed_report() -> None:
    readme, report = summary_table(README), summary_table(REPORT)
    assert list(readme) == list(report)
    for title, (measured, verdict) in readme.items():
        reported, reported_verdict = report[title]
        assert verdict == reported_verdict, title
        missing = [n for n in numbers(measured) if n not in numbers(reported)]
        assert missing == [], f"{title}: the README's {missing} are not in the report"
