"""Fine-tune minilm-l6 on SST-2 through the running service, and with a plain loop, and compare.

    python bench/train_sst2.py                       # 4000 rows, 1 epoch, one repeat
    python bench/train_sst2.py --rows 8000 --repeats 3
    python bench/train_sst2.py --url http://127.0.0.1:8000 --skip-baseline

See bench/README.md for what each figure measures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "sst2"
RESULTS = REPO / "bench" / "results"
BASE_MODEL = "minilm-l6"
API_KEY = "bench-" + os.urandom(8).hex()
PREDICT_CHUNK = 256  # the service's default max_predict_inputs


# ---------------------------------------------------------------- data


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
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps({"text": row["text"], "label": row["label"]}) + "\n")


def accuracy(predicted: list[str], rows: list[dict[str, Any]]) -> float:
    return sum(p == r["label"] for p, r in zip(predicted, rows, strict=True)) / len(rows)


# ---------------------------------------------------------------- the service


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running_service(url: str | None) -> Iterator[str]:
    """Yield the base URL of a service: the given one, or a fresh `tuneforge serve`."""
    if url:
        yield url.rstrip("/")
        return
    data_dir = Path(tempfile.mkdtemp(prefix="tuneforge-bench-"))
    port = free_port()
    env = {**os.environ, "TUNEFORGE_DATA_DIR": str(data_dir), "TUNEFORGE_PORT": str(port),
           "TUNEFORGE_BOOTSTRAP_KEY": API_KEY}
    log = (data_dir / "serve.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=REPO, env=env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"tuneforge serve exited; see {data_dir / 'serve.log'}")
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("tuneforge serve did not become healthy in 120s")
            time.sleep(0.3)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
        shutil.rmtree(data_dir, ignore_errors=True)


class Service:
    def __init__(self, base: str):
        self.client = httpx.Client(base_url=base, timeout=600,
                                   headers={"Authorization": f"Bearer {API_KEY}"})

    def _check(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise RuntimeError(f"{response.request.method} {response.request.url}: "
                               f"{response.status_code} {response.text[:500]}")
        return response.json()

    def upload(self, path: Path) -> str:
        with path.open("rb") as handle:
            body = self._check(self.client.post(
                "/v1/files", files={"file": (path.name, handle, "application/jsonl")},
                data={"purpose": "fine-tune"}))
        file_id: str = body["id"]
        return file_id

    def fine_tune(self, train_id: str, dev_id: str, args: argparse.Namespace) -> dict[str, Any]:
        body = {"model": BASE_MODEL, "training_file": train_id, "validation_file": dev_id,
                "seed": args.seed,
                "hyperparameters": {"n_epochs": args.epochs, "batch_size": args.batch_size,
                                    "learning_rate": args.learning_rate,
                                    "max_length": args.max_length}}
        started = time.perf_counter()
        job = self._check(self.client.post("/v1/fine_tuning/jobs", json=body))
        while job["status"] not in {"succeeded", "failed", "cancelled"}:
            time.sleep(0.25)
            job = self._check(self.client.get(f"/v1/fine_tuning/jobs/{job['id']}"))
        wall = time.perf_counter() - started
        if job["status"] != "succeeded":
            raise RuntimeError(f"job {job['id']} {job['status']}: {job.get('error')}")
        job["_wall_s"] = wall
        return job

    def predict_labels(self, model: str, texts: list[str]) -> list[str]:
        labels: list[str] = []
        for start in range(0, len(texts), PREDICT_CHUNK):
            out = self._check(self.client.post(f"/v1/models/{model}/predict",
                                               json={"inputs": texts[start:start + PREDICT_CHUNK]}))
            labels.extend(ranked[0]["label"] for ranked in out)
        return labels


def service_run(service: Service, train_id: str, dev_id: str, dev: list[dict[str, Any]],
                n_rows: int, args: argparse.Namespace) -> dict[str, Any]:
    job = service.fine_tune(train_id, dev_id, args)
    metrics = job.get("metrics") or {}
    started = time.perf_counter()
    predicted = service.predict_labels(job["fine_tuned_model"], [r["text"] for r in dev])
    predict_s = time.perf_counter() - started
    return {
        "job": job["id"],
        "samples_per_s": metrics.get("train_samples_per_s"),
        "wall_s": job["_wall_s"],
        "train_s": metrics.get("train_runtime_s"),
        "dev_accuracy": accuracy(predicted, dev),
        "job_eval_accuracy": metrics.get("accuracy"),
        "predict_dev_s": predict_s,
        "train_samples": n_rows * args.epochs,
    }


# ---------------------------------------------------------------- the plain loop


def baseline_run(train: list[dict[str, Any]], dev: list[dict[str, Any]],
                 args: argparse.Namespace) -> dict[str, Any]:
    """The run_glue_no_trainer shape: random batches, dynamic padding, AdamW, linear warmup."""
    import torch
    from torch.utils.data import DataLoader
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        get_scheduler,
        set_seed,
    )

    from app.ml.base_models import bundled_minilm_dir

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
    train_loader: DataLoader[Any] = DataLoader(train_features, shuffle=True,
                                               batch_size=args.batch_size, collate_fn=collator)
    dev_loader: DataLoader[Any] = DataLoader(dev_features, batch_size=args.batch_size,
                                             collate_fn=collator)
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(d in n for d in no_decay)],
         "weight_decay": args.weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(d in n for d in no_decay)],
         "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate)
    total_steps = len(train_loader) * args.epochs
    scheduler = get_scheduler("linear", optimizer,
                              num_warmup_steps=math.ceil(total_steps * args.warmup_ratio),
                              num_training_steps=total_steps)
    padded_tokens = real_tokens = 0
    train_s = eval_s = 0.0
    correct = 0
    for _ in range(args.epochs):
        started = time.perf_counter()
        model.train()
        for batch in train_loader:
            padded_tokens += batch["input_ids"].numel()
            real_tokens += int(batch["attention_mask"].sum())
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        train_s += time.perf_counter() - started
        started = time.perf_counter()
        model.eval()
        correct = 0
        with torch.no_grad():
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
    lines = [f"{'(' + head + ')':<18}{'service':>12}{'plain loop':>12}{'ratio':>9}"]
    for key, name, fmt in FIELDS:
        s = service.get(key) if service else None
        b = baseline.get(key) if baseline else None
        ratio = f"{s / b:.2f}x" if s is not None and b else "-"
        lines.append(f"{name:<18}{fmt.format(s) if s is not None else '-':>12}"
                     f"{fmt.format(b) if b is not None else '-':>12}{ratio:>9}")
    return "\n".join(lines)


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
    args = parser.parse_args(argv)
    # On SIGTERM, unwind normally so a service this run started is stopped with it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # The service's defaults for what the job does not state (app/ml/hyperparameters.py).
    args.warmup_ratio, args.weight_decay = 0.06, 0.01

    train = read_jsonl(args.data / "train.jsonl", args.rows)
    dev = read_jsonl(args.data / "dev.jsonl")
    print(f"SST-2: {len(train)} train rows, {len(dev)} dev rows, {args.epochs} epoch(s), "
          f"batch {args.batch_size}, lr {args.learning_rate}, max_length {args.max_length}, "
          f"seed {args.seed}, {os.cpu_count()} CPUs", flush=True)

    service_runs: list[dict[str, Any]] = []
    baseline_runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        train_path, dev_path = Path(tmp) / "sst2-train.jsonl", Path(tmp) / "sst2-dev.jsonl"
        write_jsonl(train_path, train)
        write_jsonl(dev_path, dev)
        serving = nullcontext("") if args.skip_service else running_service(args.url)
        with serving as base:
            service = Service(base)
            if not args.skip_service:
                train_id, dev_id = service.upload(train_path), service.upload(dev_path)
            for repeat in range(args.repeats):
                if not args.skip_service:
                    run = service_run(service, train_id, dev_id, dev, len(train), args)
                    service_runs.append(run)
                    print(f"[{repeat + 1}/{args.repeats}] service: "
                          + json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                        for k, v in run.items()}), flush=True)
                if not args.skip_baseline:
                    run = baseline_run(train, dev, args)
                    baseline_runs.append(run)
                    print(f"[{repeat + 1}/{args.repeats}] plain loop: "
                          + json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                        for k, v in run.items()}), flush=True)

    service_median = median_of(service_runs) if service_runs else None
    baseline_median = median_of(baseline_runs) if baseline_runs else None
    print()
    print(table(service_median, baseline_median, args.repeats))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"sst2-{stamp}.json"
    ratios = {}
    if service_median and baseline_median:
        ratios = {k: service_median[k] / baseline_median[k] for k, _, _ in FIELDS
                  if service_median.get(k) is not None and baseline_median.get(k)}
    out.write_text(json.dumps({
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "service": {"runs": service_runs, "median": service_median},
        "baseline": {"runs": baseline_runs, "median": baseline_median},
        "ratios_service_over_baseline": ratios,
    }, indent=2))
    print(f"\nwrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
