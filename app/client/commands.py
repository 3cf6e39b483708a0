"""The client's subcommands: argparse wiring, and one short handler a command.

A handler gets a connected ServiceClient and the parsed options and returns the exit status;
`run_command` turns the service's refusals and unreachable URLs into one clean line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.client import render
from app.client.api import DEFAULT_URL, ApiError, ClientError, ServiceClient
from app.client.follow import OUTCOMES, EventFeed, follow_events, follow_with_bar, show_events

Handler = Callable[[ServiceClient, argparse.Namespace], int]
INTERRUPTED = 130  # the shell's status for a command stopped by Ctrl-C
# Inputs per predict request: well under the service's default cap of 256.
PREDICT_BATCH = 32
# The job options that are hyperparameters, with their types; each is --name-with-dashes.
HYPERPARAMETERS: dict[str, type] = {
    "n_epochs": int, "batch_size": int, "learning_rate": float,
    "learning_rate_multiplier": float, "max_length": int, "warmup_ratio": float,
    "weight_decay": float, "max_grad_norm": float, "gradient_accumulation_steps": int,
    "eval_steps": int, "early_stopping_patience": int}


def run_command(handler: Handler, args: argparse.Namespace) -> int:
    # httpx logs every request at INFO, which the CLI's logging setup would show.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    url = args.url or os.environ.get("TUNEFORGE_URL") or DEFAULT_URL
    try:
        with ServiceClient(url, args.api_key or os.environ.get("TUNEFORGE_API_KEY")) as client:
            return handler(client, args)
    except ApiError as exc:
        render.err.print(f"tuneforge: {exc} ({exc.status} {exc.code or 'error'}"
                         f"{f', param {exc.param}' if exc.param else ''})", style="red")
    except ClientError as exc:
        render.err.print(f"tuneforge: {exc}", style="red")
    except KeyboardInterrupt:
        return INTERRUPTED
    return 1


def files_upload(client: ServiceClient, args: argparse.Namespace) -> int:
    path = Path(args.path)
    return show(args, client.upload_file(path, args.purpose), render.FILE_FIELDS)


def jobs_create(client: ServiceClient, args: argparse.Namespace) -> int:
    job = client.create_job(job_body(args))
    if not args.follow:
        return show(args, job, render.JOB_FIELDS)
    render.err.print(f"Created {job['id']} ({job['status']}); following it. Ctrl-C stops "
                     "following, not the job.")
    return follow_job(client, job["id"], args)


def job_body(args: argparse.Namespace) -> dict[str, Any]:
    # Options given one by one win over the same names in --hyperparameters.
    hyperparameters = {**(args.hyperparameters or {}),
                       **{name: getattr(args, name) for name in HYPERPARAMETERS
                          if getattr(args, name) is not None}}
    body = {"model": args.model, "training_file": args.training_file,
            "validation_file": args.validation_file, "suffix": args.suffix, "seed": args.seed,
            "task": args.task, "hyperparameters": hyperparameters or None,
            "compute": {"queue": args.queue} if args.queue else None}
    return {name: value for name, value in body.items() if value is not None}


def follow_job(client: ServiceClient, job_id: str, args: argparse.Namespace) -> int:
    try:
        job = follow_with_bar(client, job_id, args.interval)
    except KeyboardInterrupt:
        render.err.print(f"Stopped following {job_id}; the job goes on. "
                         f"`tuneforge jobs get {job_id} --follow` follows it again.")
        return INTERRUPTED
    show(args, job, render.OUTCOME_FIELDS)
    return OUTCOMES[job["status"]]


def jobs_list(client: ServiceClient, args: argparse.Namespace) -> int:
    page = client.list_jobs(args.limit, args.status)
    if args.json:
        render.print_json(page)
        return 0
    render.show_jobs(page["data"])
    if page["has_more"]:
        render.err.print("Older jobs follow; --limit shows up to 100.")
    return 0


def jobs_get(client: ServiceClient, args: argparse.Namespace) -> int:
    if args.follow:
        return follow_job(client, args.job_id, args)
    return show(args, client.get_job(args.job_id), render.JOB_FIELDS)


def jobs_events(client: ServiceClient, args: argparse.Namespace) -> int:
    if not args.follow:
        show_events(EventFeed(client, args.job_id).new_events(), args.json)
        return 0
    try:
        job = follow_events(client, args.job_id, args.interval, args.json)
    except KeyboardInterrupt:
        return INTERRUPTED
    if not args.json:
        render.err.print(f"{job['id']} {job['status']}")
    return OUTCOMES[job["status"]]


def job_verb(verb: str) -> Handler:
    """cancel, pause or resume: the job as the service answers after the change."""
    def change(client: ServiceClient, args: argparse.Namespace) -> int:
        job = client.change_job(args.job_id, verb)
        if job["status"] == "running":
            # A running job is stopped by its worker, between two steps: not yet.
            render.err.print(f"{verb.capitalize()} requested; the worker stops the job after "
                             "its current step.")
        return show(args, job, render.JOB_FIELDS)
    return change


def predict(client: ServiceClient, args: argparse.Namespace) -> int:
    texts = args.text if args.text and args.text != ["-"] else stdin_texts()
    if not texts:
        raise ClientError("nothing to predict: give TEXT arguments or lines on stdin")
    outputs: list[Any] = []
    for start in range(0, len(texts), PREDICT_BATCH):
        outputs.extend(client.predict(args.model, texts[start:start + PREDICT_BATCH]))
    if args.json:
        render.print_json(outputs)
    else:
        render.show_predictions(texts, outputs)
    return 0


def stdin_texts() -> list[str]:
    # The service refuses a blank input; an empty line in a file is not a text to predict.
    return [line.rstrip("\r\n") for line in sys.stdin if line.strip()]


def models_list(client: ServiceClient, args: argparse.Namespace) -> int:
    page = client.list_models()
    if args.json:
        render.print_json(page)
    else:
        render.show_models(page["data"])
    return 0


def models_download(client: ServiceClient, args: argparse.Namespace) -> int:
    if args.output == "-":
        client.download_model(args.model, sys.stdout.buffer.write, args.format)
        sys.stdout.buffer.flush()
        return 0
    chosen = Path(args.output or ".")
    into_folder = chosen.is_dir()
    folder = chosen if into_folder else chosen.parent
    # Written beside its destination under another name, and renamed once whole: an
    # interrupted download leaves no file that looks like a model.
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".tuneforge-", suffix=".part",
                                     delete=False) as part:
        try:
            name = client.download_model(args.model, part.write, args.format)
        except BaseException:
            os.unlink(part.name)
            raise
    target = folder / name if into_folder else chosen
    os.replace(part.name, target)
    render.err.print(f"Saved {args.model} to {target} ({target.stat().st_size:,} bytes); "
                     f"`tar xzf {target}` unpacks it.")
    return 0


def show(args: argparse.Namespace, obj: dict[str, Any], fields: tuple[str, ...]) -> int:
    if args.json:
        render.print_json(obj)
    else:
        render.show_object(obj, fields)
    return 0


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"n_epochs\": 2}'")
    return value


# ---------------------------------------------------------------- argparse wiring


def add_client_commands(commands: Any) -> None:
    """Register files, jobs, predict and models on the `tuneforge` subcommand parsers."""
    client = client_options()
    files = commands.add_parser("files", help="datasets on a running service")
    files_sub = files.add_subparsers(dest="files_command", required=True)
    upload = command(files_sub, "upload", files_upload, "upload a dataset file", client)
    upload.add_argument("path", help="JSON lines or CSV")
    upload.add_argument("--purpose", default="fine-tune")
    add_jobs_commands(commands, client)
    predict_cmd = command(commands, "predict", predict,
                          "predict with a model; texts as arguments, or one a line on stdin",
                          client)
    predict_cmd.add_argument("model", help="version id, name, or name@alias")
    predict_cmd.add_argument("text", nargs="*", help="texts; none or '-' reads stdin")
    models = commands.add_parser("models", help="models on a running service")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    command(models_sub, "list", models_list, "base and fine-tuned models", client)
    download = command(models_sub, "download", models_download,
                       "a fine-tuned version as a .tar.gz that transformers loads", client)
    download.add_argument("model", help="version id, name, or name@alias")
    download.add_argument("-o", "--output", metavar="FILE",
                          help="file or folder to save to; '-' writes to stdout (default: "
                               "the version's name, e.g. ft-sentiment-v1.tar.gz, here)")
    download.add_argument("--format", choices=("merged", "adapter"),
                          help="for a LoRA version: merged into its base (the default), or "
                               "the adapter and head alone, for peft")


def add_jobs_commands(commands: Any, client: argparse.ArgumentParser) -> None:
    follow = follow_options()
    jobs = commands.add_parser("jobs", help="fine-tuning jobs on a running service")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    add_create_command(jobs_sub, client, follow)
    listing = command(jobs_sub, "list", jobs_list, "the newest jobs", client)
    listing.add_argument("--limit", type=int, default=20, help="at most 100 (default 20)")
    listing.add_argument("--status", help="only jobs in this status")
    command(jobs_sub, "get", jobs_get, "one job; --follow draws its progress", client,
            follow).add_argument("job_id")
    command(jobs_sub, "events", jobs_events, "a job's events, oldest first", client,
            follow).add_argument("job_id")
    for verb in ("cancel", "pause", "resume"):
        command(jobs_sub, verb, job_verb(verb), f"{verb} a job", client).add_argument("job_id")


def add_create_command(jobs_sub: Any, client: argparse.ArgumentParser,
                       follow: argparse.ArgumentParser) -> None:
    create = command(jobs_sub, "create", jobs_create, "start a fine-tuning job", client, follow)
    create.add_argument("--training-file", required=True, metavar="FILE_ID")
    create.add_argument("--validation-file", metavar="FILE_ID")
    create.add_argument("--model", default="minilm-l6",
                        help="base model or fine-tuned model (default minilm-l6)")
    create.add_argument("--suffix", help="name of the model the job registers")
    create.add_argument("--seed", type=int)
    create.add_argument("--task", help="instead of the task detected from the rows")
    create.add_argument("--queue", help="the worker queue to train on, e.g. gpu (compute.queue; "
                                        "default: the service's default queue)")
    create.add_argument("--hyperparameters", type=json_object, metavar="JSON",
                        help="a JSON object; the options below win over it")
    for name, kind in HYPERPARAMETERS.items():
        create.add_argument("--" + name.replace("_", "-"), type=kind, dest=name,
                            metavar=kind.__name__.upper())


def command(parent: Any, name: str, handler: Handler, help_text: str,
            *options: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = parent.add_parser(name, help=help_text,
                                                        parents=list(options))
    parser.set_defaults(func=lambda args: sys.exit(run_command(handler, args)))
    return parser


def client_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--url", help=f"the service (TUNEFORGE_URL; default {DEFAULT_URL})")
    options.add_argument("--api-key", help="TUNEFORGE_API_KEY")
    options.add_argument("--json", action="store_true", help="print the raw JSON")
    return options


def follow_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--follow", action="store_true",
                         help="poll until the job has finished; exit 0 if it succeeded")
    options.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                         help="between polls while following (default 1)")
    return options
