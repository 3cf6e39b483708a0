"""Fine-tune minilm-l6 for NER on CoNLL-2003 through the service, and with a plain
transformers token-classification loop, on the same slice and settings, and compare.

    python bench/train_conll.py                      # 2,000 train sentences, 1 epoch
    python bench/train_conll.py --full-test          # also score the whole test split
    python bench/train_conll.py --sentences 500 --test-sentences 200   # a quick look

Both sides: same model, sentences, epochs, batch size, learning rate, warmup, weight decay,
max_length and seed. Sentences/s is training sentences over training seconds (the service's
from the job's `train_runtime_s`, which also holds its one end-of-epoch evaluation).
Entity F1 is seqeval's on the test split: for the service both as the job evaluated it (first
sub-token of each CoNLL token, like the plain loop) and through the predict endpoint (raw text
in, character spans out, mapped back onto the tokens). See bench/CONLL.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "conll2003"
RESULTS = REPO / "bench" / "results"
BASE_MODEL = "minilm-l6"
API_KEY = "bench-" + os.urandom(8).hex()
PREDICT_CHUNK = 200


def read_jsonl(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                rows.append(json.loads(line))
                if limit is not None and len(rows) >= limit:
                    break
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps({"tokens": r["tokens"], "tags": r["tags"]}) + "\n"
                            for r in rows), encoding="utf-8")


def entity_f1(gold: list[list[str]], predicted: list[list[str]]) -> float:
    from seqeval.metrics import f1_score

    return float(f1_score(gold, predicted))


# ---------------------------------------------------------------- the service


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running_service(url: str | None) -> Iterator[str]:
    """The given service, or a fresh `tuneforge serve` in a temporary data folder."""
    if url:
        yield url.rstrip("/")
        return
    with tempfile.TemporaryDirectory(prefix="tuneforge-bench-") as data_dir:
        port = free_port()
        env = {**os.environ, "TUNEFORGE_DATA_DIR": data_dir, "TUNEFORGE_PORT": str(port),
               "TUNEFORGE_BOOTSTRAP_KEY": API_KEY}
        with (Path(data_dir) / "serve.log").open("wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=REPO,
                                       env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            base = f"http://127.0.0.1:{port}"
            try:
                _wait_healthy(process, base)
                yield base
            finally:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def _wait_healthy(process: subprocess.Popen[bytes], base: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("tuneforge serve exited during start-up")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("tuneforge serve did not become healthy in 120s")


class Service:
    def __init__(self, base: str):
        self.client = httpx.Client(base_url=base, timeout=600,
                                   headers={"Authorization": f"Bearer {API_KEY}"})

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json()

    def upload(self, path: Path) -> str:
        with path.open("rb") as handle:
            body = self.call("POST", "/v1/files", data={"purpose": "fine-tune"},
                             files={"file": (path.name, handle, "application/jsonl")})
        return str(body["id"])

    def fine_tune(self, train_id: str, eval_id: str, args: argparse.Namespace) -> dict[str, Any]:
        job = self.call("POST", "/v1/fine_tuning/jobs", json={
            "model": BASE_MODEL, "training_file": train_id, "validation_file": eval_id,
            "seed": args.seed, "task": "token-classification",
            "hyperparameters": {"n_epochs": args.epochs, "batch_size": args.batch_size,
                                "learning_rate": args.learning_rate,
                                "max_length": args.max_length}})
        started = time.perf_counter()
        while job["status"] not in {"succeeded", "failed", "cancelled"}:
            time.sleep(0.5)
            job = self.call("GET", f"/v1/fine_tuning/jobs/{job['id']}")
        if job["status"] != "succeeded":
            raise RuntimeError(f"job {job['id']} {job['status']}: {job.get('error')}")
        job["_wall_s"] = time.perf_counter() - started
        return job

    def predicted_tags(self, model: str, rows: list[dict[str, Any]]) -> list[list[str]]:
        tags: list[list[str]] = []
        for start in range(0, len(rows), PREDICT_CHUNK):
            chunk = rows[start:start + PREDICT_CHUNK]
            outputs = self.call("POST", f"/v1/models/{model}/predict", json={
                "inputs": [" ".join(r["tokens"]) for r in chunk],
                "parameters": {"aggregation_strategy": "first"}})
            tags.extend(tags_from_spans(r["tokens"], entities)
                        for r, entities in zip(chunk, outputs, strict=True))
        return tags


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
    with tempfile.TemporaryDirectory() as tmp, running_service(args.url) as base:
        service = Service(base)
        train_path, test_path = Path(tmp) / "conll-train.jsonl", Path(tmp) / "conll-test.jsonl"
        write_jsonl(train_path, train)
        write_jsonl(test_path, test)
        job = service.fine_tune(service.upload(train_path), service.upload(test_path), args)
        metrics = job["metrics"]
        started = time.perf_counter()
        served = service.predicted_tags(job["fine_tuned_model"], test)
        result = {
            "job": job["id"],
            "sentences_per_s": len(train) * args.epochs / metrics["train_runtime_s"],
            "train_s": metrics["train_runtime_s"],
            "wall_s": job["_wall_s"],
            "test_entity_f1": metrics["entity_f1"],
            "served_test_entity_f1": entity_f1([r["tags"] for r in test], served),
            "predict_test_s": time.perf_counter() - started,
        }
        if full_test:
            served = service.predicted_tags(job["fine_tuned_model"], full_test)
            result["served_full_test_entity_f1"] = entity_f1([r["tags"] for r in full_test],
                                                             served)
        return result


# ---------------------------------------------------------------- the plain loop


def baseline_run(train: list[dict[str, Any]], test: list[dict[str, Any]],
                 full_test: list[dict[str, Any]] | None,
                 args: argparse.Namespace) -> dict[str, Any]:
    """The run_ner_no_trainer shape: random batches, dynamic padding, first sub-token
    labelled, truncation at max_length, AdamW with linear warmup."""
    import torch
    from torch.utils.data import DataLoader
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        get_scheduler,
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
    no_decay = ("bias", "LayerNorm.weight")
    optimizer = torch.optim.AdamW([
        {"params": [p for n, p in model.named_parameters() if not any(d in n for d in no_decay)],
         "weight_decay": args.weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(d in n for d in no_decay)],
         "weight_decay": 0.0}], lr=args.learning_rate)
    total = len(loader) * args.epochs
    scheduler = get_scheduler("linear", optimizer,
                              num_warmup_steps=math.ceil(total * args.warmup_ratio),
                              num_training_steps=total)
    started = time.perf_counter()
    model.train()
    for _ in range(args.epochs):
        for batch in loader:
            model(**batch).loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    train_s = time.perf_counter() - started

    def test_f1(rows: list[dict[str, Any]]) -> float:
        model.eval()
        gold, predicted = [], []
        features = encode(rows)
        with torch.no_grad():
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
              "test_entity_f1": test_f1(test), "torch_threads": torch.get_num_threads()}
    if full_test:
        result["full_test_entity_f1"] = test_f1(full_test)
    return result


# ---------------------------------------------------------------- report


FIELDS = [("sentences_per_s", "sentences/s", "{:.2f}"),
          ("train_s", "train time (s)", "{:.1f}"),
          ("test_entity_f1", "test entity F1", "{:.4f}"),
          ("full_test_entity_f1", "full test F1", "{:.4f}")]


def table(service: dict[str, Any], baseline: dict[str, Any]) -> str:
    lines = [f"{'':<18}{'service':>12}{'plain loop':>12}{'ratio':>9}"]
    service = {**service, "full_test_entity_f1": service.get("served_full_test_entity_f1")}
    for key, name, fmt in FIELDS:
        s, b = service.get(key), baseline.get(key)
        ratio = f"{s / b:.2f}x" if s is not None and b else "-"
        lines.append(f"{name:<18}{fmt.format(s) if s is not None else '-':>12}"
                     f"{fmt.format(b) if b is not None else '-':>12}{ratio:>9}")
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
    args = parser.parse_args(argv)
    # The service's defaults for what the job does not state (app/ml/hyperparameters.py).
    args.warmup_ratio, args.weight_decay = 0.06, 0.01
    random.seed(args.seed)

    train = read_jsonl(args.data / "train.jsonl", args.sentences)
    full = read_jsonl(args.data / "test.jsonl")
    test = full[:args.test_sentences]
    print(f"CoNLL-2003: {len(train)} train sentences, test {len(test)}"
          f"{f' and all {len(full)}' if args.full_test else ''}, {args.epochs} epoch(s), "
          f"batch {args.batch_size}, lr {args.learning_rate}, {os.cpu_count()} CPUs", flush=True)
    service = service_run(train, test, full if args.full_test else None, args)
    print("service:", json.dumps(service), flush=True)
    baseline = baseline_run(train, test, full if args.full_test else None, args)
    print("plain loop:", json.dumps(baseline), flush=True)
    print()
    print(table(service, baseline))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"conll-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "service": service, "baseline": baseline,
        "ratios_service_over_baseline": {
            k: service[k] / baseline[k] for k in ("sentences_per_s", "test_entity_f1")},
    }, indent=2))
    print(f"\nwrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
