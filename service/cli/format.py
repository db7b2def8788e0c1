"""How the CLI draws things: numbers, statuses, specs, tables and progress bars.

Everything here is made to read at 80 columns: tables without vertical rules (each rule costs
three columns), short ids (:func:`service.vocab.short_id`, 8 characters, which every command
accepts back as a prefix), and progress bars that keep free text (metrics, counts) on a line of
its own so the step counter is never squeezed out. Pure rendering: no HTTP, no Typer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rich import box
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column, Table
from rich.text import Text

from service.vocab import RunStatus, short_id

STATUS_STYLE = {
    RunStatus.queued: "cyan",
    RunStatus.running: "blue",
    RunStatus.succeeded: "green",
    RunStatus.failed: "red",
    RunStatus.diverged: "magenta",
    RunStatus.cancelled: "yellow",
}
NAME_WIDTH = 28  # the most a run or sweep name takes on a progress bar's line


# ----------------------------------------------------------------------------- values


def styled_status(status: Any) -> str:
    text = str(status)
    return f"[{STATUS_STYLE.get(text, 'white')}]{escape(text)}[/]"


def fmt_number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "–"


def fmt_ratio(value: Any) -> str:
    return f"{value:.2f}×" if isinstance(value, int | float) else "–"


def fmt_stat(stat: Mapping[str, Any] | None, pattern: str) -> str:
    """{"mean", "ci_low", "ci_high", "bound"} → "≥ 800" and, on a second line, "[700, 900]"
    (bound: what the mean is). An interval of zero width (a single run, or identical seeds) is
    left out. The interval goes below the mean so that narrow columns never split it."""
    if not stat or stat.get("mean") is None:
        return "–"
    prefix = {"lower": "≥ ", "upper": "≤ "}.get(stat.get("bound") or "", "")
    text = prefix + pattern.format(stat["mean"])
    if stat.get("ci_low") is not None and stat.get("ci_high") is not None:
        low, high = pattern.format(stat["ci_low"]), pattern.format(stat["ci_high"])
        if low != high:
            text += f"\n[dim]\\[{low}, {high}][/dim]"
    return text


def fmt_mean(stat: Mapping[str, Any] | None, pattern: str) -> str:
    """{"mean", "bound"} → "≥ 800": the mean alone, marked when it is a bound."""
    if not stat or stat.get("mean") is None:
        return "–"
    prefix = {"lower": "≥ ", "upper": "≤ "}.get(stat.get("bound") or "", "")
    return prefix + pattern.format(stat["mean"])


def short_time(value: Any) -> str:
    """ISO-8601 → "2024-06-01 12:34:56"."""
    if not value:
        return ""
    return str(value).replace("T", " ")[:19]


def format_metrics(values: Mapping[str, Any]) -> str:
    """The few numbers worth a glance while training."""
    parts = []
    for key, label in (
        ("train_loss", "loss"),
        ("train_acc", "acc"),
        ("test_loss", "test loss"),
        ("test_acc", "test acc"),
    ):
        value = values.get(key)
        if isinstance(value, int | float):
            parts.append(f"{label} {value:.4g}")
    return "  ".join(parts)


def spec_rows(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A spec as a few labelled lines: data, model, optimizer, seed."""
    model = spec.get("model") or {}
    opt = spec.get("optimizer") or {}
    hidden = "x".join(str(w) for w in model.get("hidden") or [])
    return [
        (
            "data",
            f"{spec.get('dataset')}, batch {spec.get('batch_size')}, {spec.get('steps')} steps, "
            f"evaluated every {spec.get('eval_every')}",
        ),
        (
            "model",
            f"{model.get('arch')} [{hidden}] {model.get('activation')}, norm={model.get('norm')}",
        ),
        ("optimizer", f"{opt.get('name')} lr={opt.get('lr')} momentum={opt.get('momentum')}"),
        ("seed", str(spec.get("seed"))),
    ]


def latest_values(page: Mapping[str, Any]) -> dict[str, str]:
    """The last value of each series of a metrics response, as "value (step)"."""
    latest = {}
    for key, series in sorted((page.get("series") or {}).items()):
        steps, values = series.get("steps") or [], series.get("values") or []
        if steps:
            value = values[-1]
            shown = f"{value:.4g}" if isinstance(value, int | float) else str(value)
            latest[key] = f"{shown} ({steps[-1]})"
    return latest


def run_label(run: Mapping[str, Any]) -> str:
    """ "run 6f1c2a9b (name)": how messages name a run."""
    return f"run {short_id(str(run.get('id')))} ({run.get('name')})"


# ----------------------------------------------------------------------------- tables


def table(title: str | None = None) -> Table:
    """A table for 80 columns: a rule under the header, no vertical rules, no outer edge."""
    return Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1, 0, 0),  # with the blank rule: two spaces between columns
    )


def add_columns(into: Table, columns: Iterable[tuple[str, dict[str, Any]]]) -> Table:
    """Columns as (header, Column options) pairs."""
    for header, options in columns:
        into.add_column(header, **options)
    return into


ID_COLUMN: dict[str, Any] = {"no_wrap": True, "min_width": 8}  # a short id, never broken
NUMBER: dict[str, Any] = {"justify": "right", "no_wrap": True}


def key_value_table(title: str, values: Mapping[str, Any]) -> Table:
    shown = table(title)
    shown.show_header = False
    shown.add_column(style="bold")
    shown.add_column(justify="right")
    for key, value in values.items():
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        shown.add_row(escape(str(key)), escape(text))
    return shown


# ----------------------------------------------------------------------------- progress


class NotedProgress(Progress):
    """A progress bar (name, bar, done/total, elapsed) with a note line under it.

    The note (a run's status and latest metrics, a sweep's counts) goes on its own line: on
    the bar's line it would squeeze the done/total counter off an 80-column terminal.
    """

    def __init__(self, console: Console) -> None:
        super().__init__(
            SpinnerColumn(),
            TextColumn(
                "{task.description}",
                table_column=Column(no_wrap=True, overflow="ellipsis", max_width=NAME_WIDTH),
            ),
            BarColumn(bar_width=20),
            MofNCompleteColumn(table_column=Column(no_wrap=True)),
            TimeElapsedColumn(),
            console=console,
        )

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        for task in self.tasks:
            note = task.fields.get("note")
            if note:
                yield Text.from_markup(f"  {note}", overflow="fold")
