"""How the client shows what the service answers: objects, tables, events and predictions."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

# Server text (file names, labels, your own inputs) is shown as it is: no rich markup, no
# emoji codes, no guessed highlighting; long lines are left for the terminal to wrap, so a
# piped message stays one line.
out = Console(markup=False, emoji=False, highlight=False, soft_wrap=True)
err = Console(stderr=True, markup=False, emoji=False, highlight=False, soft_wrap=True)

FILE_FIELDS = ("id", "filename", "purpose", "status", "format", "rows", "bytes",
               "detected_task", "label_counts", "created_at")
JOB_FIELDS = ("id", "status", "model", "task", "fine_tuned_model", "training_file",
              "validation_file", "progress", "metrics", "hyperparameters", "error",
              "created_at", "finished_at")
OUTCOME_FIELDS = ("id", "status", "fine_tuned_model", "metrics", "error")
LEVEL_STYLES = {"warning": "yellow", "error": "bold red"}


def print_json(data: Any) -> None:
    """Raw JSON for scripts, written past rich so nothing wraps or colours it."""
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def print_json_line(data: Any) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def show_object(obj: dict[str, Any], fields: Sequence[str]) -> None:
    """The fields that have a value, one a line, in the order given (the id first)."""
    shown = [(name, value_text(name, obj[name])) for name in fields
             if obj.get(name) not in (None, {}, [])]
    width = max((len(name) for name, _ in shown), default=0)
    for name, value in shown:
        out.print(Text.assemble((name.ljust(width), "bold"), "  ", value))


def value_text(name: str, value: Any) -> str:
    if name == "progress":
        return progress_text(value)
    if name == "error" and isinstance(value, dict):
        return f"{value.get('code')}: {value.get('message')}"
    if name.endswith("_at") or name == "created":
        return timestamp(value)
    if isinstance(value, dict):
        return ", ".join(f"{key} {value_text(key, item)}" for key, item in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)


def progress_text(progress: dict[str, Any]) -> str:
    total = progress.get("total_steps") or 0
    if not total:
        return "not started"
    return f"step {progress.get('step', 0)}/{total} ({progress.get('fraction', 0):.0%})"


def timestamp(value: Any) -> str:
    # Base models have no creation time (0): show nothing rather than 1970.
    if not isinstance(value, int | float) or value <= 0:
        return ""
    return datetime.fromtimestamp(value).isoformat(sep=" ", timespec="seconds")


def show_table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    table = Table(*columns, box=None, header_style="bold", pad_edge=False)
    for column in table.columns[:1]:
        column.no_wrap = True  # ids stay whole, so they can be copied
    for row in rows:
        table.add_row(*row)
    out.print(table)


def show_jobs(jobs: list[dict[str, Any]]) -> None:
    show_table(("id", "status", "model", "fine_tuned_model", "progress", "created_at"),
               ([job["id"], job["status"], job["model"], job.get("fine_tuned_model") or "",
                 progress_text(job.get("progress") or {}), timestamp(job.get("created_at")),
                 ] for job in jobs))


def show_models(models: list[dict[str, Any]]) -> None:
    show_table(("id", "task", "base_model", "created"),
               ([model["id"], model.get("task") or "", model.get("base_model") or "",
                 timestamp(model.get("created"))] for model in models))


def event_line(event: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(event["created_at"]).strftime("%H:%M:%S")
    return f"{when}  {event['level']:<7}  {event['message']}"


def show_event(event: dict[str, Any], console: Console = out) -> None:
    console.print(event_line(event), style=LEVEL_STYLES.get(event["level"]))


def show_predictions(texts: list[str], outputs: list[Any]) -> None:
    show_table(("input", "prediction", "score"),
               ([text, *prediction_text(output)] for text, output in zip(texts, outputs,
                                                                          strict=True)))


def prediction_text(output: Any) -> tuple[str, str]:
    """(what the model answered, its score) for one input, whatever the model's task."""
    answers = output if isinstance(output, list) else [output]
    first = answers[0] if answers else {}
    if "entity_group" in first or "entity" in first or not answers:
        return entities_text(answers), ""
    if "generated_text" in first:
        return str(first["generated_text"]), ""
    top = first.get("label", first.get("token_str", ""))
    return str(top), score_text(first)


def entities_text(entities: list[dict[str, Any]]) -> str:
    if not entities:
        return "(no entities)"
    return "; ".join(f"{e.get('word')} {e.get('entity_group', e.get('entity'))} "
                     f"{score_text(e)}" for e in entities)


def score_text(answer: dict[str, Any]) -> str:
    score = answer.get("score")
    return f"{score:.4f}" if isinstance(score, int | float) else ""
