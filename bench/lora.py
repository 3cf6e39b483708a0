"""Full fine-tuning against LoRA on SST-2, each at its own best learning rate from a small grid.

    python bench/lora.py                  # 2,000 rows, 1 epoch, batch 16, minilm-l6
    python bench/lora.py --full-rates 5e-5,1e-4 --lora-rates 5e-4,1e-3,2e-3 --r 16

Every (method, learning rate) trains in a fresh process of its own through
app.ml.training.fine_tune, the loop a worker runs (evaluations, checkpoints and the checkpoint
rule of app/ml/selection.py included), on the same rows and seed; the validation rows are
train-split rows that are neither trained on nor scored. Per run:
- accuracy: on the whole SST-2 dev split, of the checkpoint that becomes the version, served
  as the service serves it (fp32; LoRA over the shared base);
- artifact: the bytes of that checkpoint's folder once its resume-only files are dropped,
  which is what the version stores (full: the whole model; LoRA: adapter, head, tokenizer);
- peak memory: the training process's RSS high-water mark (getrusage's ru_maxrss) at the end
  of training, Python, torch and the loaded model included;
- median step: the median wall time between consecutive optimizer steps (the few steps that
  an evaluation or a checkpoint follows are slower; the median leaves them out).
Each method's best rate is chosen by its validation macro-F1, not by dev accuracy, and the
two are compared. Run it alone on the machine: the step times are wall time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import common


def split(args: argparse.Namespace) -> tuple[list[Any], list[Any], list[Any]]:
    pool = common.read_jsonl(common.SHARED_DATA / "sst2" / "train.jsonl")
    random.Random(0).shuffle(pool)
    dev = common.read_jsonl(common.SHARED_DATA / "sst2" / "dev.jsonl", args.dev_rows)
    return pool[:args.rows], pool[args.rows:args.rows + args.validation_rows], dev


class StepClock:
    """The training observer: asked whether to stop once after every optimizer step, it
    notes when."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_progress(self, progress: dict[str, Any]) -> None: ...

    def on_evaluation(self, step: int, metrics: dict[str, float]) -> None: ...

    def on_checkpoint(self, step: int, epoch: float, metrics: dict[str, float],
                      directory: Path) -> None: ...

    def stop_requested(self) -> None:
        self.stamps.append(time.perf_counter())

    def median_step_s(self) -> float:
        gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]
        return statistics.median(gaps) if gaps else 0.0


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def one_run(point: dict[str, Any]) -> dict[str, Any]:
    """Train and score one (method, learning rate), in the process this is called in."""
    from app.ml.base_models import bundled_minilm_dir
    from app.ml.hyperparameters import resolve
    from app.ml.inference import SharedBase, load_model
    from app.ml.tasks.classification import TextClassification
    from app.ml.training import TrainingPlan, fine_tune, strip_resume_state

    task, base = TextClassification(), str(bundled_minilm_dir())
    raw = {"n_epochs": point["epochs"], "batch_size": point["batch_size"],
           "learning_rate": point["learning_rate"], "max_length": point["max_length"]}
    if point["lora"]:
        raw["lora"] = point["lora"]
    with tempfile.TemporaryDirectory(prefix="tuneforge-lora-bench-") as scratch:
        plan = TrainingPlan(task=task, base_model=base, train_rows=point["train"],
                            eval_rows=point["validation"], labels=task.labels(point["train"]),
                            hyperparameters=resolve(raw, len(point["train"])),
                            seed=point["seed"], output_dir=Path(scratch) / "job",
                            mixed_precision=False)
        clock = StepClock()
        result = fine_tune(plan, clock)
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        assert result.best_checkpoint is not None
        strip_resume_state(plan.output_dir)
        shared = SharedBase(base, "fp32") if point["lora"] else None
        served = load_model(task, result.best_checkpoint, point["max_length"], "fp32", shared)
        outputs = served.predict([row["text"] for row in point["dev"]], {})
        return {"accuracy": sum(o[0]["label"] == row["label"]
                                for o, row in zip(outputs, point["dev"], strict=True))
                / len(point["dev"]),
                "validation_macro_f1": result.best_metrics.get("macro_f1", 0.0),
                "artifact_bytes": folder_bytes(result.best_checkpoint),
                "peak_rss_bytes": peak_rss, "median_step_s": clock.median_step_s(),
                "steps": result.final_step}


def grid(args: argparse.Namespace, rows: tuple[list[Any], list[Any], list[Any]]
         ) -> list[dict[str, Any]]:
    train, validation, dev = rows
    lora = {"r": args.r, "alpha": args.alpha, "dropout": args.dropout}
    shared = {"epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed,
              "max_length": args.max_length, "train": train, "validation": validation,
              "dev": dev}
    return ([{**shared, "method": "full", "learning_rate": rate, "lora": None}
             for rate in args.full_rates]
            + [{**shared, "method": "lora", "learning_rate": rate, "lora": lora}
               for rate in args.lora_rates])


def summary(runs: list[dict[str, Any]]) -> str:
    lines = [f"{'':<6}{'best lr':>9}{'accuracy':>10}{'artifact MB':>13}{'peak RSS MB':>13}"
             f"{'median step s':>15}   grid (lr: validation macro-F1 / dev accuracy)"]
    for method in ("full", "lora"):
        mine = [run for run in runs if run["method"] == method]
        if not mine:
            continue
        best = max(mine, key=lambda run: run["validation_macro_f1"])
        tried = ", ".join(f"{run['learning_rate']:g}: {run['validation_macro_f1']:.3f} / "
                          f"{run['accuracy']:.3f}" for run in mine)
        lines.append(f"{method:<6}{best['learning_rate']:>9g}{best['accuracy']:>10.4f}"
                     f"{best['artifact_bytes'] / 1e6:>13.2f}{best['peak_rss_bytes'] / 1e6:>13.0f}"
                     f"{best['median_step_s']:>15.3f}   {tried}")
    return "\n".join(lines)


def rates(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--validation-rows", type=int, default=200)
    parser.add_argument("--dev-rows", type=int, default=None, help="default: all 872")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full-rates", type=rates, default=[5e-5, 1e-4])
    parser.add_argument("--lora-rates", type=rates, default=[5e-4, 1e-3])
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--alpha", type=int, default=16)
    parser.add_argument("--dropout", type=float, default=0.1)
    args = parser.parse_args(argv)
    rows = split(args)
    print(f"SST-2: {len(rows[0])} train rows, {len(rows[1])} validation rows, {len(rows[2])} "
          f"dev rows; {args.epochs} epoch(s), batch {args.batch_size}, fp32, "
          f"{os.cpu_count()} CPUs", flush=True)
    runs = []
    # A fresh process per run: each one's memory high-water mark is its own.
    context = multiprocessing.get_context("spawn")
    for point in grid(args, rows):
        with context.Pool(1) as worker:
            run = {"method": point["method"], "learning_rate": point["learning_rate"],
                   **worker.apply(one_run, (point,))}
        runs.append(run)
        print(f"{run['method']} lr {run['learning_rate']:g}: dev accuracy {run['accuracy']:.4f}, "
              f"validation macro-F1 {run['validation_macro_f1']:.4f}, artifact "
              f"{run['artifact_bytes'] / 1e6:.2f} MB, peak RSS "
              f"{run['peak_rss_bytes'] / 1e6:.0f} MB, median step {run['median_step_s']:.3f}s",
              flush=True)
    print()
    print(summary(runs))
    common.write_results("lora", args, {"runs": runs})


if __name__ == "__main__":
    main()
