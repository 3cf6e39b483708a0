"""Fine-tune minilm-l6 for NER on CoNLL-2003 through the service, and with a plain
transformers token-classification loop, on the same slice and settings, and compare.

    python bench/train_conll.py                      # 2,000 train sentences, 1 epoch
    python bench/train_conll.py --full-test          # also score the whole test split
    python bench/train_conll.py --sentences 500 --test-sentences 200   # a quick look

Both sides: same model, sentences, epochs, batch size, learning rate, warmup, weight decay,
max_length and seed. Sentences/s is training sentences over seconds of training steps, on
both sides without evaluation and checkpoint writes (the service's is the job's
`train_samples_per_s`; its `train_runtime_s`, evaluation included, is kept in the JSON).
Entity F1 is seqeval's on the test split: for the service both as the job evaluated it (first
sub-token of each CoNLL token, like the plain loop) and through the predict endpoint (raw text
in, character spans out, mapped back onto the tokens). See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
from typing import Any

# bench/common.py: run as a script, this folder is first on sys.path.
import common

DATA = common.SHARED_DATA / "conll2003"
PREDICT_CHUNK = 200
COLUMNS = ("tokens", "tags")


def entity_f1(gold: list[list[str]], predicted: list[list[str]]) -> float:
    from seqeval.metrics import f1_score

    return float(f1_score(gold, predicted))


# ---------------------------------------------------------------- the service


def predicted_tags(service: common.Service, model: str,
                   rows: list[dict[str, Any]]) -> list[list[str]]:
    """Tags for CoNLL tokens from the predict endpoint, given the sentence as raw text."""
    outputs = service.predict(model, [" ".join(r["tokens"]) for r in rows], PREDICT_CHUNK,
                              parameters={"aggregation_strategy": "first"})
    return [tags_from_spans(r["tokens"], entities)
            for r, entities in zip(rows, outputs, strict=True)]


def tags_from_spans(tokens: list[str], entities: list[dict[str, Any]]) -> list[str]:
    """Token tags from character spans over ' '.join(tokens)."""
    starts, position = [], 0
    for token in tokens:
        starts.append(position)
        position += len(token) + 1
    tags = ["O"] * len(tokens)
    for entity in entities:
        inside = [i for i, s in enumerate(starts) if entity["start"] <= s < entity["end"]]
        for n, i in enumerate(inside):
            tags[i] = ("B-" if n == 0 else "I-") + entity["entity_group"]
    return tags


def service_run(train: list[dict[str, Any]], test: list[dict[str, Any]],
                full_test: list[dict[str, Any]] | None, args: argparse.Namespace) -> dict[str, Any]:
    with common.running_service(args.url) as base:
        service = common.Service(base)
        job = service.fine_tune(service.upload_rows("conll-train.jsonl", train, COLUMNS),
                                service.upload_rows("conll-test.jsonl", test, COLUMNS),
                                args, task="token-classification")
        metrics = job["metrics"]
        started = time.perf_counter()
        served = predicted_tags(service, job["fine_tuned_model"], test)
        result = {
            "job": job["id"],
            # Training steps only, like the plain loop: evaluation and checkpoints left out.
            "sentences_per_s": metrics["train_samples_per_s"],
            "train_s": metrics["train_runtime_s"] - metrics["evaluate_and_save_s"],
            "train_runtime_s": metrics["train_runtime_s"],
            "wall_s": job["_wall_s"],
            "test_entity_f1": metrics["entity_f1"],
            "served_test_entity_f1": entity_f1([r["tags"] for r in test], served),
            "predict_test_s": time.perf_counter() - started,
        }
        if full_test:
            served = predicted_tags(service, job["fine_tuned_model"], full_test)
            result["served_full_test_entity_f1"] = entity_f1([r["tags"] for r in full_test],
                                                             served)
        return result


# ---------------------------------------------------------------- the plain loop


def baseline_run(train: list[dict[str, Any]], test: list[dict[str, Any]],
                 full_test: list[dict[str, Any]] | None,
                 args: argparse.Namespace, bf16: bool = False) -> dict[str, Any]:
    """The run_ner_no_trainer shape: random batches, dynamic padding, first sub-token
    labelled, truncation at max_length, AdamW with linear warmup. With `bf16`, forward
    passes run under bf16 autocast, as the service's do where native."""
    import torch
    from torch.utils.data import DataLoader
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        set_seed,
    )

    from app.ml.base_models import bundled_minilm_dir

    set_seed(args.seed)
    base = str(bundled_minilm_dir())
    kinds = sorted({t[2:] for r in train for t in r["tags"] if t != "O"})
    labels = ["O"] + [f"{bi}-{k}" for k in kinds for bi in ("B", "I")]
    label2id = {label: i for i, label in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForTokenClassification.from_pretrained(
        base, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id)

    def encode(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        enc = tokenizer([r["tokens"] for r in rows], is_split_into_words=True,
                        truncation=True, max_length=args.max_length)
        features = []
        for i, row in enumerate(rows):
            previous, item_labels = None, []
            for word in enc.word_ids(i):
                first = word is not None and word != previous
                item_labels.append(label2id.get(row["tags"][word], -100)
                                   if first and word is not None else -100)
                previous = word
            features.append({**{k: enc[k][i] for k in enc}, "labels": item_labels})
        return features

    collator = DataCollatorForTokenClassification(tokenizer)
    loader: DataLoader[Any] = DataLoader(encode(train), shuffle=True,  # type: ignore[arg-type]
                                         batch_size=args.batch_size, collate_fn=collator)
    optimizer, scheduler = common.adamw_with_warmup(model, args, len(loader) * args.epochs)
    started = time.perf_counter()
    model.train()
    for _ in range(args.epochs):
        for batch in loader:
            common.plain_step(model, batch, optimizer, scheduler, bf16)
    train_s = time.perf_counter() - started

    def test_f1(rows: list[dict[str, Any]]) -> float:
        model.eval()
        gold, predicted = [], []
        features = encode(rows)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for start in range(0, len(features), 64):
                batch = collator(features[start:start + 64])
                ids = batch.pop("labels")
                guesses = model(**batch).logits.argmax(-1)
                for row_ids, row_guesses in zip(ids, guesses, strict=True):
                    kept = row_ids != -100
                    gold.append([labels[i] for i in row_ids[kept]])
                    predicted.append([labels[i] for i in row_guesses[kept]])
        return entity_f1(gold, predicted)

    result = {"sentences_per_s": len(train) * args.epochs / train_s, "train_s": train_s,
              "test_entity_f1": test_f1(test), "torch_threads": torch.get_num_threads(),
              "bf16_autocast": bf16}
    if full_test:
        result["full_test_entity_f1"] = test_f1(full_test)
    return result


# ---------------------------------------------------------------- report


FIELDS = [("sentences_per_s", "sentences/s", "{:.2f}"),
          ("train_s", "train time (s)", "{:.1f}"),
          ("test_entity_f1", "test entity F1", "{:.4f}"),
          ("full_test_entity_f1", "full test F1", "{:.4f}")]


def table(service: dict[str, Any], baseline: dict[str, Any]) -> str:
    # The service's full-test F1 is the one through /predict: it sits in that row.
    service = {**service, "full_test_entity_f1": service.get("served_full_test_entity_f1")}
    lines = common.comparison_table("", FIELDS, service, baseline)
    lines.append(f"{'served test F1':<18}{service['served_test_entity_f1']:>12.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=2000, help="train sentences (first N)")
    parser.add_argument("--test-sentences", type=int, default=500)
    parser.add_argument("--full-test", action="store_true", help="also score the whole split")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--url", help="use this running service instead of starting one")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--bf16-baseline", action="store_true",
                        help="also run the plain loop under bf16 autocast, as a second table")
    args = parser.parse_args(argv)
    common.add_service_defaults(args)
    random.seed(args.seed)

    train = common.read_jsonl(args.data / "train.jsonl", args.sentences)
    full = common.read_jsonl(args.data / "test.jsonl")
    test = full[:args.test_sentences]
    print(f"CoNLL-2003: {len(train)} train sentences, test {len(test)}"
          f"{f' and all {len(full)}' if args.full_test else ''}, {args.epochs} epoch(s), "
          f"batch {args.batch_size}, lr {args.learning_rate}, {os.cpu_count()} CPUs", flush=True)
    service = service_run(train, test, full if args.full_test else None, args)
    print("service:", json.dumps(service), flush=True)
    baseline = baseline_run(train, test, full if args.full_test else None, args)
    print("plain loop:", json.dumps(baseline), flush=True)
    bf16 = (baseline_run(train, test, full if args.full_test else None, args, bf16=True)
            if args.bf16_baseline else None)
    if bf16:
        print("plain loop, bf16:", json.dumps(bf16), flush=True)
    print()
    print(table(service, baseline))
    if bf16:
        print("\nThe same service run against the plain loop under bf16 autocast:")
        print(table(service, bf16))
    keys = ["sentences_per_s", "test_entity_f1"]
    common.write_results("conll", args, {
        "service": service, "baseline": baseline, "baseline_bf16": bf16,
        "ratios_service_over_baseline": common.ratios(service, baseline, keys),
        "ratios_service_over_baseline_bf16": common.ratios(service, bf16, keys) if bf16 else {},
    })


if __name__ == "__main__":
    main()
