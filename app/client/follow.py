"""Following a job by polling it and its events: as a live progress bar, or as event lines."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from app.client import render
from app.client.api import ServiceClient

# Exit status of a follow, by the status the job ended in.
OUTCOMES = {"succeeded": 0, "failed": 1, "cancelled": 1}


class EventFeed:
    """A job's events, each once, oldest first, read from the newest-first list."""

    def __init__(self, client: ServiceClient, job_id: str):
        self.client = client
        self.job_id = job_id
        self.seen: set[str] = set()

    def new_events(self) -> list[dict[str, Any]]:
        # Events are listed in the order they were numbered, but two writers (the worker and
        # a cancel request) may commit out of that order: an event can appear below one
        # already seen. So every poll reads the newest page and keeps what is unseen, and
        # pages further back only while a whole page was new.
        fresh: list[dict[str, Any]] = []
        after = None
        while True:
            page = self.client.list_events(self.job_id, after=after)
            unseen = [event for event in page["data"] if event["id"] not in self.seen]
            fresh.extend(unseen)
            if len(unseen) < len(page["data"]) or not page["has_more"]:
                break
            after = page["data"][-1]["id"]
        self.seen.update(event["id"] for event in fresh)
        return fresh[::-1]


def watch(client: ServiceClient, job_id: str,
          interval_s: float) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The job and its new events, every `interval_s`, until it has finished."""
    feed = EventFeed(client, job_id)
    while True:
        # The job first: once it has finished, the events read after it are all there are.
        job = client.get_job(job_id)
        yield job, feed.new_events()
        if job["status"] in OUTCOMES:
            return
        time.sleep(interval_s)


def follow_with_bar(client: ServiceClient, job_id: str, interval_s: float) -> dict[str, Any]:
    """Draw the job's training progress on stderr, with its other events above the bar;
    returns the finished job."""
    step: dict[str, Any] = {}
    job: dict[str, Any] = {}
    with training_bar() as bar:
        task = bar.add_task(job_id, total=None, loss="", speed="", eta="")
        for job, events in watch(client, job_id, interval_s):
            steps = [event["data"] for event in events if is_step(event)]
            step = steps[-1] if steps else step
            bar.update(task, **bar_fields(job, step))
            for event in events:
                if not is_step(event):
                    render.show_event(event, bar.console)
    return job


def follow_events(client: ServiceClient, job_id: str, interval_s: float,
                  as_json: bool) -> dict[str, Any]:
    """Print the job's events as they come; returns the finished job."""
    job: dict[str, Any] = {}
    for latest, events in watch(client, job_id, interval_s):
        show_events(events, as_json)
        job = latest
    return job


def show_events(events: list[dict[str, Any]], as_json: bool) -> None:
    for event in events:
        if as_json:
            render.print_json_line(event)
        else:
            render.show_event(event)


def training_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[loss]}"), TextColumn("{task.fields[speed]}"),
                    TextColumn("{task.fields[eta]}"), console=render.err)


def is_step(event: dict[str, Any]) -> bool:
    """A training step's progress event (the loop's on_progress): loss, samples/s, ETA."""
    return event.get("type") == "metrics" and "train_loss" in (event.get("data") or {})


def bar_fields(job: dict[str, Any], step: dict[str, Any]) -> dict[str, Any]:
    progress = job.get("progress") or {}
    description = job["status"]
    if "trial" in step:
        description += f" (trial {step['trial'] + 1})"
    fields: dict[str, Any] = {"description": description,
                              "total": progress.get("total_steps") or None,
                              "completed": progress.get("step", 0), "loss": "", "speed": "",
                              "eta": eta_text(job)}
    if "train_loss" in step:
        fields["loss"] = f"loss {step['train_loss']:.4f}"
    if step.get("samples_per_s") is not None:
        fields["speed"] = f"{step['samples_per_s']:.1f} samples/s"
    return fields


def eta_text(job: dict[str, Any]) -> str:
    """Time left by the service's estimate (set while the job runs), counted down here."""
    finish = job.get("estimated_finish")
    if job["status"] != "running" or not finish:
        return ""
    left = max(0, int(finish - time.time()))
    return f"ETA {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"
