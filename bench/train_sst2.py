"""Fine-tune minilm-l6 on SST-2 through the running service, and with a plain loop, and compare.

    python bench/train_sst2.py                       # 4000 rows, 1 epoch, one repeat
    python bench/train_sst2.py --rows 8000 --repeats 3
    python bench/train_sst2.py --url http://127.0.0.1:8000 --skip-baseline

See bench/README.md for what each figure measures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

# bench/common.py: run as a script, this folder is first on sys.path.
import common

DATA = common.SHARED_DATA / "sst2"
PREDICT_CHUNK = 256  # the service's default max_predict_inputs
COLUMNS = ("text", "label")


def accuracy(predicted: list[str], rows: list[dict[str, Any]]) -> float:
    return sum(p == r["label"] for p, r in zip(predicted, rows, strict=True)) / len(rows)


# ---------------------------------------------------------------- the service


def service_run(service: common.Service, train_id: str, dev_id: str,
                dev: list[dict[str, Any]], n_rows: int, args: argparse.Namespace) -> dict[str, Any]:
    job = service.fine_tune(train_id, dev_id, args)
    metrics = job.get("metrics") or {}
    started = time.perf_counter()
    outputs = service.predict(job["fine_tuned_model"], [r["text"] for r in dev], PREDICT_CHUNK)
    predicted = [ranked[0]["label"] for ranked in outputs]
    predict_s = time.perf_counter() - started
    return {
        "job": job["id"],
        "samples_per_s": metrics.get("train_samples_per_s"),
        "wall_s": job["_wall_s"],
        # Training steps only, like the plain loop's figure: evaluation and checkpoints out.
        "train_s": metrics["train_runtime_s"] - metrics["evaluate_and_save_s"],
        "train_runtime_s": metrics["train_runtime_s"],
        "dev_accuracy": accuracy(predicted, dev),
        "job_eval_accuracy": metrics.get("accuracy"),
        "predict_dev_s": predict_s,
        "train_samples": n_rows * args.epochs,
    }


# ---------------------------------------------------------------- the plain loop


def baseline_run(train: list[dict[str, Any]], dev: list[dict[str, Any]],
                 args: argparse.Namespace, bf16: bool = False,
                 grouped: int = 0) -> dict[str, Any]:
    """The run_glue_no_trainer shape: random batches, dynamic padding, AdamW, linear warmup.
    With `bf16`, forward passes run under bf16 autocast, as the service's do where native.
    With `grouped` > 0, batches come from the service's length-grouped sampler instead, rows
    sorted by length within windows of that many batches."""
    import torch
    from torch.utils.data import DataLoader
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        set_seed,
    )

    from app.ml.base_models import bundled_minilm_dir
    from app.ml.batching import LengthGroupedSampler

    wall_started = time.perf_counter()
    set_seed(args.seed)
    base = str(bundled_minilm_dir())
    labels = sorted({r["label"] for r in train})
    label2id = {label: i for i, label in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id)

    def encode(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=args.max_length)
        return [{**{k: enc[k][i] for k in enc}, "labels": label2id[r["label"]]}
                for i, r in enumerate(rows)]

    collator = DataCollatorWithPadding(tokenizer)
    train_features: Any = encode(train)
    dev_features: Any = encode(dev)
    sampler = LengthGroupedSampler([len(f["input_ids"]) for f in train_features],
                                   args.batch_size, args.seed, grouped) if grouped else None
    train_loader: DataLoader[Any] = DataLoader(train_features, shuffle=not grouped,
                                               sampler=sampler, batch_size=args.batch_size,
                                               collate_fn=collator)
    dev_loader: DataLoader[Any] = DataLoader(dev_features, batch_size=args.batch_size,
                                             collate_fn=collator)
    total_steps = len(train_loader) * args.epochs
    optimizer, scheduler = common.adamw_with_warmup(model, args, total_steps)
    padded_tokens = real_tokens = 0
    train_s = eval_s = 0.0
    correct = 0
    for epoch in range(args.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        started = time.perf_counter()
        model.train()
        for batch in train_loader:
            padded_tokens += batch["input_ids"].numel()
            real_tokens += int(batch["attention_mask"].sum())
            common.plain_step(model, batch, optimizer, scheduler, bf16)
        train_s += time.perf_counter() - started
        started = time.perf_counter()
        model.eval()
        correct = 0
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for batch in dev_loader:
                gold = batch.pop("labels")
                correct += int((model(**batch).logits.argmax(-1) == gold).sum())
        eval_s += time.perf_counter() - started
    n_samples = len(train) * args.epochs
    return {
        "samples_per_s": n_samples / train_s,
        "wall_s": time.perf_counter() - wall_started,
        "train_s": train_s,
        "eval_s": eval_s,
        "dev_accuracy": correct / len(dev),
        "train_samples": n_samples,
        "padding_ratio": padded_tokens / max(real_tokens, 1),
        "torch_threads": torch.get_num_threads(),
        "bf16_autocast": bf16,
    }


# ---------------------------------------------------------------- report


FIELDS = [("samples_per_s", "samples/s", "{:.1f}"),
          ("train_s", "train time (s)", "{:.1f}"),
          ("wall_s", "wall time (s)", "{:.1f}"),
          ("dev_accuracy", "dev accuracy", "{:.4f}")]


def median_of(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = {k for run in runs for k, v in run.items() if isinstance(v, int | float)}
    return {k: statistics.median(run[k] for run in runs if run.get(k) is not None)
            for k in sorted(keys) if any(run.get(k) is not None for run in runs)}


def table(service: dict[str, float] | None, baseline: dict[str, float] | None,
          repeats: int) -> str:
    head = "median of " + str(repeats) if repeats > 1 else "single run"
    return "\n".join(common.comparison_table(f"({head})", FIELDS, service, baseline))


def rounded(run: dict[str, Any]) -> str:
    return json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in run.items()})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4000, help="SST-2 train rows (first N)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="runs per side; medians if >1")
    parser.add_argument("--url", help="use this running service instead of starting one")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data", type=Path, default=DATA, help="folder with SST-2 jsonl")
    parser.add_argument("--bf16-baseline", action="store_true",
                        help="also run the plain loop under bf16 autocast, as a second table")
    args = parser.parse_args(argv)
    common.add_service_defaults(args)

    train = common.read_jsonl(args.data / "train.jsonl", args.rows)
    dev = common.read_jsonl(args.data / "dev.jsonl")
    print(f"SST-2: {len(train)} train rows, {len(dev)} dev rows, {args.epochs} epoch(s), "
          f"batch {args.batch_size}, lr {args.learning_rate}, max_length {args.max_length}, "
          f"seed {args.seed}, {os.cpu_count()} CPUs", flush=True)

    service_runs: list[dict[str, Any]] = []
    baseline_runs: list[dict[str, Any]] = []
    bf16_runs: list[dict[str, Any]] = []
    serving = nullcontext("") if args.skip_service else common.running_service(args.url)
    with serving as base:
        service = common.Service(base)
        if not args.skip_service:
            train_id = service.upload_rows("sst2-train.jsonl", train, COLUMNS)
            dev_id = service.upload_rows("sst2-dev.jsonl", dev, COLUMNS)
        for repeat in range(args.repeats):
            if not args.skip_service:
                run = service_run(service, train_id, dev_id, dev, len(train), args)
                service_runs.append(run)
                print(f"[{repeat + 1}/{args.repeats}] service: {rounded(run)}", flush=True)
            if not args.skip_baseline:
                run = baseline_run(train, dev, args)
                baseline_runs.append(run)
                print(f"[{repeat + 1}/{args.repeats}] plain loop: {rounded(run)}", flush=True)
            if args.bf16_baseline:
                run = baseline_run(train, dev, args, bf16=True)
                bf16_runs.append(run)
                print(f"[{repeat + 1}/{args.repeats}] plain loop, bf16: {rounded(run)}",
                      flush=True)

    service_median = median_of(service_runs) if service_runs else None
    baseline_median = median_of(baseline_runs) if baseline_runs else None
    print()
    print(table(service_median, baseline_median, args.repeats))
    bf16_median = median_of(bf16_runs) if bf16_runs else None
    if bf16_median:
        print("\nThe same service runs against the plain loop under bf16 autocast:")
        print(table(service_median, bf16_median, args.repeats))
    keys = [k for k, _, _ in FIELDS]
    common.write_results("sst2", args, {
        "service": {"runs": service_runs, "median": service_median},
        "baseline": {"runs": baseline_runs, "median": baseline_median},
        "baseline_bf16": {"runs": bf16_runs, "median": bf16_median},
        "ratios_service_over_baseline": (common.ratios(service_median, baseline_median, keys)
                                         if service_median and baseline_median else {}),
        "ratios_service_over_baseline_bf16": (common.ratios(service_median, bf16_median, keys)
                                              if service_median and bf16_median else {}),
    })


if __name__ == "__main__":
    main()
