"""Multi-label quality and speed on GoEmotions (28 labels): the service beside a plain
transformers loop (sigmoid head, BCE) on the same rows, scored on the same test comments.

    python bench/multilabel.py                          # 2,000 rows, 2 epochs, max_length 64
    python bench/multilabel.py --rows 8000 --epochs 3 --learning-rate 1e-4
    python bench/multilabel.py --url http://127.0.0.1:8000

Both sides train on a seeded sample of the train split with the same hyperparameters (what the
service chooses, or what is given) and are scored on the first --test-rows comments of the
test split:
- service: a job with a validation file (other train rows, 10% as many); its per-label
  thresholds are tuned on them; predict's `predicted` flags are its decisions, and its scores
  cut at 0.5 are shown beside them;
- plain loop: AutoModelForSequenceClassification with problem_type multi_label_classification,
  float multi-hot labels, AdamW with linear warmup, scored at 0.5 and at thresholds tuned on
  the same validation rows by the same rule (app/ml/tasks/multi_label.py).
See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

import common
import numpy as np

DATA = common.SHARED_DATA / "goemotions"
PREDICT_CHUNK = 256
COLUMNS = ("text", "labels")
FIELDS = [("micro_f1", "micro F1", "{:.4f}"), ("macro_f1", "macro F1", "{:.4f}"),
          ("micro_f1_at_half", "micro F1 @0.5", "{:.4f}"),
          ("macro_f1_at_half", "macro F1 @0.5", "{:.4f}"),
          ("train_s", "train time (s)", "{:.1f}"), ("wall_s", "wall time (s)", "{:.1f}")]


def split_rows(args: argparse.Namespace) -> tuple[list[Any], list[Any], list[Any]]:
    """Training rows, validation rows (other train rows) and the scored test rows."""
    pool = common.read_jsonl(DATA / "train.jsonl")
    random.Random(args.seed).shuffle(pool)
    n_val = max(20, args.rows // 10)
    test = common.read_jsonl(DATA / "test.jsonl", args.test_rows)
    return pool[:args.rows], pool[args.rows:args.rows + n_val], test


def multi_hot(rows: list[dict[str, Any]], labels: list[str]) -> np.ndarray:
    """(rows, labels) booleans; a label the model does not know is left out, on both sides."""
    index = {label: i for i, label in enumerate(labels)}
    gold = np.zeros((len(rows), len(labels)), dtype=bool)
    for r, row in enumerate(rows):
        for label in row["labels"]:
            if label in index:
                gold[r, index[label]] = True
    return gold


def scores(probs: np.ndarray, gold: np.ndarray, thresholds: np.ndarray,
           labels: list[str]) -> dict[str, float]:
    """Micro and macro F1 at the thresholds given and at 0.5, as the service computes them."""
    from app.ml.tasks.multi_label import multi_label_metrics

    tuned = multi_label_metrics(probs, gold, thresholds, labels)
    half = multi_label_metrics(probs, gold, np.full(len(labels), 0.5), labels)
    return {"micro_f1": tuned["micro_f1"], "macro_f1": tuned["macro_f1"],
            "micro_f1_at_half": half["micro_f1"], "macro_f1_at_half": half["macro_f1"]}


# ---------------------------------------------------------------- the service


def service_run(args: argparse.Namespace, train: list[Any], validation: list[Any],
                test: list[Any]) -> dict[str, Any]:
    with common.running_service(args.url) as base:
        service = common.Service(base)
        ids = (service.upload_rows("goemotions-train.jsonl", train, COLUMNS),
               service.upload_rows("goemotions-validation.jsonl", validation, COLUMNS))
        hyperparameters = {"n_epochs": args.epochs, "max_length": args.max_length}
        for key in ("batch_size", "learning_rate"):
            if getattr(args, key) is not None:
                hyperparameters[key] = getattr(args, key)
        job = service.train(*ids, hyperparameters, seed=args.seed,
                            task="multi-label-classification")
        outputs = service.predict(job["fine_tuned_model"], [r["text"] for r in test],
                                  PREDICT_CHUNK)
    labels = sorted(element["label"] for element in outputs[0])
    column = {label: i for i, label in enumerate(labels)}
    probs = np.zeros((len(test), len(labels)))
    thresholds = np.zeros(len(labels))
    for r, output in enumerate(outputs):
        for element in output:
            probs[r, column[element["label"]]] = element["score"]
            thresholds[column[element["label"]]] = element["threshold"]
    metrics = job["metrics"]
    return {"job": job["id"], "hyperparameters": job["hyperparameters"],
            **scores(probs, multi_hot(test, labels), thresholds, labels),
            "train_s": metrics["train_runtime_s"] - metrics["evaluate_and_save_s"],
            "wall_s": job["_wall_s"], "job_micro_f1": metrics.get("micro_f1")}


# ---------------------------------------------------------------- the plain loop


def baseline_run(args: argparse.Namespace, train: list[Any], validation: list[Any],
                 test: list[Any]) -> dict[str, Any]:
    """A plain BCE loop: random batches, dynamic padding, AdamW, linear warmup, fp32 or bf16
    autocast as the service trains here."""
    import torch
    from torch.utils.data import DataLoader
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        set_seed,
    )

    from app.ml.base_models import bundled_minilm_dir
    from app.ml.precision import use_bf16
    from app.ml.tasks.multi_label import tune_thresholds

    wall_started = time.perf_counter()
    bf16 = use_bf16(True)
    set_seed(args.seed)
    base = str(bundled_minilm_dir())
    labels = sorted({label for row in train for label in row["labels"]})
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type="multi_label_classification")
    collator = DataCollatorWithPadding(tokenizer)

    def loader(rows: list[Any], shuffle: bool) -> DataLoader[Any]:
        enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=args.max_length)
        hot = multi_hot(rows, labels).astype(float)
        features = [{**{k: enc[k][i] for k in enc}, "labels": hot[i].tolist()}
                    for i in range(len(rows))]
        return DataLoader(features, shuffle=shuffle,  # type: ignore[arg-type]
                          batch_size=args.plain_batch_size, collate_fn=collator)

    def probabilities(rows: list[Any]) -> np.ndarray:
        model.eval()
        out = []
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for batch in loader(rows, shuffle=False):
                batch.pop("labels")
                out.append(torch.sigmoid(model(**batch).logits.float()).numpy())
        return np.concatenate(out)

    train_loader = loader(train, shuffle=True)
    optimizer, scheduler = common.adamw_with_warmup(
        model, args, len(train_loader) * args.epochs)
    train_s = common.train_plain(model, train_loader, optimizer, scheduler, args.epochs, bf16)
    thresholds = tune_thresholds(probabilities(validation), multi_hot(validation, labels))
    return {**scores(probabilities(test), multi_hot(test, labels), thresholds, labels),
            "train_s": train_s, "wall_s": time.perf_counter() - wall_started,
            "bf16_autocast": bf16, "torch_threads": torch.get_num_threads()}


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000, help="training rows (seeded sample)")
    parser.add_argument("--test-rows", type=int, default=1000, help="scored test comments")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, help="default: the service's choice")
    parser.add_argument("--learning-rate", type=float, help="default: the service's choice")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--url", help="use this running service instead of starting one")
    args = parser.parse_args(argv)
    common.add_service_defaults(args)
    train, validation, test = split_rows(args)
    print(f"GoEmotions: {len(train)} train rows, {len(validation)} validation rows, "
          f"{len(test)} scored rows", flush=True)
    service = service_run(args, train, validation, test)
    print(f"service: {service}", flush=True)
    # The plain loop trains with what the service trained with, chosen or given.
    args.learning_rate = service["hyperparameters"]["learning_rate"]
    args.plain_batch_size = service["hyperparameters"]["batch_size"]
    baseline = None if args.skip_baseline else baseline_run(args, train, validation, test)
    print(f"plain loop: {baseline}", flush=True)
    print(f"\n(thresholds tuned on {len(validation)} validation rows; @0.5: every label at 0.5)")
    print("\n".join(common.comparison_table("GoEmotions", FIELDS, service, baseline)))
    common.write_results("multilabel", args, {"service": service, "baseline": baseline})


if __name__ == "__main__":
    main()
