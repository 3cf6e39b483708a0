"""Parity at equal budget: the service and a plain transformers loop given the same explicit
hyperparameters, over several seeds, with the pieces that differ switched one at a time.

    python bench/parity.py                          # SST-2, 2,000 rows, 1 epoch, 3 seeds
    python bench/parity.py --epochs 3 --learning-rate 1e-4

Columns, each from the same training rows and scored on the whole SST-2 dev split:
- plain: the run_glue_no_trainer shape (random batches, AdamW, linear warmup), fp32;
- plain, grouped N: the same loop drawing its batches from the service's length-grouped
  sampler (app/ml/batching.py), rows sorted by length within windows of N batches (the
  service's window is MEGABATCH_BATCHES); one column per --windows value;
- service: a job with the same learning rate, batch size, epochs and max length, and the
  service's defaults for the rest (evaluation every few steps on the validation rows, early
  stopping, the checkpoint rule of app/ml/selection.py);
- service, no early stop: the same job with `early_stopping_patience: 0`;
- service, clipped: the same job with `max_grad_norm: 1` (Trainer's default; the service and
  the plain loop clip nothing by default).
The validation rows are train-split rows that are neither trained on nor scored. Accuracy is
the median over seeds; the speed ratio is the plain loop's training seconds over the
service's (evaluation and checkpoint writes left out of both). Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
from typing import Any

import common
import train_sst2

from app.ml.batching import MEGABATCH_BATCHES


def split(args: argparse.Namespace) -> tuple[list[Any], list[Any], list[Any]]:
    pool = common.read_jsonl(common.SHARED_DATA / "sst2" / "train.jsonl")
    random.Random(0).shuffle(pool)
    dev = common.read_jsonl(common.SHARED_DATA / "sst2" / "dev.jsonl")
    return pool[:args.rows], pool[args.rows:args.rows + args.validation_rows], dev


def service_point(service: common.Service, ids: tuple[str, str], dev: list[Any],
                  args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    job = service.train(*ids, {"n_epochs": args.epochs, "batch_size": args.batch_size,
                               "learning_rate": args.learning_rate,
                               "max_length": args.max_length, **extra}, seed=args.seed)
    metrics = job["metrics"]
    outputs = service.predict(job["fine_tuned_model"], [r["text"] for r in dev],
                              train_sst2.PREDICT_CHUNK)
    return {"accuracy": train_sst2.accuracy([o[0]["label"] for o in outputs], dev),
            "train_s": metrics["train_runtime_s"] - metrics["evaluate_and_save_s"],
            "stopped_at_step": (job.get("progress") or {}).get("step"), "job": job["id"]}


def plain_point(train: list[Any], dev: list[Any], args: argparse.Namespace,
                grouped: int) -> dict[str, Any]:
    run = train_sst2.baseline_run(train, dev, args, grouped=grouped)
    return {"accuracy": run["dev_accuracy"], "train_s": run["train_s"],
            "padding_ratio": run["padding_ratio"]}


def one_seed(service: common.Service, ids: tuple[str, str], train: list[Any], dev: list[Any],
             args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    run = {"plain": plain_point(train, dev, args, grouped=0)}
    for window in args.windows:
        run[f"plain, grouped {window}"] = plain_point(train, dev, args, grouped=window)
    run["service"] = service_point(service, ids, dev, args)
    if not args.skip_no_early_stop:
        run["service, no early stop"] = service_point(service, ids, dev, args,
                                                      early_stopping_patience=0)
    if not args.skip_clipped:
        run["service, clipped at 1"] = service_point(service, ids, dev, args, max_grad_norm=1.0)
    return run


def summary(runs: list[dict[str, dict[str, Any]]]) -> str:
    def med(column: str, key: str) -> float:
        return statistics.median(run[column][key] for run in runs)

    plain_acc, plain_s = med("plain", "accuracy"), med("plain", "train_s")
    lines = [f"{'':<24}{'accuracy':>10}{'- plain':>9}{'train s':>9}{'speed':>8}   per seed"]
    for column in runs[0]:
        acc, seconds = med(column, "accuracy"), med(column, "train_s")
        per_seed = " ".join(f"{run[column]['accuracy']:.4f}" for run in runs)
        lines.append(f"{column:<24}{acc:>10.4f}{acc - plain_acc:>+9.4f}{seconds:>9.1f}"
                     f"{plain_s / seconds:>7.2f}x   {per_seed}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--validation-rows", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--windows", type=lambda t: [int(x) for x in t.split(",") if x],
                        default=[MEGABATCH_BATCHES],
                        help="length-grouping windows (in batches) for plain, grouped")
    parser.add_argument("--skip-no-early-stop", action="store_true")
    parser.add_argument("--skip-clipped", action="store_true")
    parser.add_argument("--url", help="use this running service instead of starting one")
    args = parser.parse_args(argv)
    common.add_service_defaults(args)
    train, validation, dev = split(args)
    print(f"SST-2: {len(train)} train rows, {len(validation)} validation rows, {len(dev)} dev "
          f"rows; {args.epochs} epoch(s), batch {args.batch_size}, lr {args.learning_rate}, "
          f"{args.seeds} seeds, {os.cpu_count()} CPUs", flush=True)
    runs = []
    with common.running_service(args.url) as base:
        service = common.Service(base)
        ids = (service.upload_rows("parity-train.jsonl", train, train_sst2.COLUMNS),
               service.upload_rows("parity-validation.jsonl", validation, train_sst2.COLUMNS))
        for seed in range(args.seeds):
            args.seed = seed
            runs.append(one_seed(service, ids, train, dev, args))
            print(f"seed {seed}: " + ", ".join(
                f"{c} {runs[-1][c]['accuracy']:.4f} in {runs[-1][c]['train_s']:.0f}s"
                for c in runs[-1]), flush=True)
    print(f"\n(median of {args.seeds} seeds)")
    print(summary(runs))
    common.write_results("parity", args, {"runs": runs})


if __name__ == "__main__":
    main()
