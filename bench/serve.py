"""Serving speed: the service, a naive FastAPI + transformers pipeline server, and the model
alone, on the same trained MiniLM version, under closed-loop load.

    python bench/serve.py                    # 1, 8, 32, 128 clients, 30 s each
    python bench/serve.py --seconds 10 --clients 1,32

One run: trains a quick SST-2 version through `tuneforge serve` (default settings), then
loads it with SST-2 dev sentences, one per request, from N closed-loop clients (each sends
its next request when the last is answered); stops the service and does the same against a
naive server this script starts (`pipeline("text-classification")` called once per request
in a plain FastAPI route); then times the model alone in length-sorted batches of 64, and
measures each serving precision against fp32 on all of SST-2 dev.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    API_KEY,
    REPO,
    SHARED_DATA,
    Service,
    free_port,
    read_jsonl,
    running_service,
    write_results,
)

ALONE_BATCH = 64
WARMUP_S = 2.0


# ---------------------------------------------------------------- closed-loop load


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = next((int(line.split(":", 1)[1]) for line in lines[1:]
                   if line.lower().startswith("content-length:")), 0)
    await reader.readexactly(length)
    return status


async def _closed_loop(port: int, path: str, headers: dict[str, str], texts: list[str],
                       clients: int, seconds: float) -> dict[str, Any]:
    """`clients` connections, each sending its next request when the last is answered."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    latencies: list[float] = []
    errors = {"count": 0}
    loop = asyncio.get_running_loop()
    measuring_from = loop.time() + WARMUP_S
    deadline = measuring_from + seconds

    async def client(i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n = i
        try:
            while loop.time() < deadline:
                body = json.dumps({"inputs": texts[n % len(texts)]}).encode()
                n += clients
                request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                           f"{extra}\r\n").encode() + body
                started = loop.time()
                try:
                    writer.write(request)
                    status = await _read_response(reader)
                except (ConnectionError, asyncio.IncompleteReadError):
                    status = 0
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                if started < measuring_from:
                    continue  # warming up
                if status == 200:
                    latencies.append(loop.time() - started)
                else:
                    errors["count"] += 1
        finally:
            writer.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    latencies.sort()
    return {
        "clients": clients, "seconds": seconds, "rows": len(latencies),
        "rows_per_s": len(latencies) / seconds, "errors": errors["count"],
        "p50_ms": 1000 * _quantile(latencies, 0.5), "p99_ms": 1000 * _quantile(latencies, 0.99),
    }


def _quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def load_levels(port: int, path: str, headers: dict[str, str], texts: list[str],
                args: argparse.Namespace, name: str) -> list[dict[str, Any]]:
    levels = []
    for clients in args.clients:
        level = asyncio.run(_closed_loop(port, path, headers, texts, clients, args.seconds))
        print(f"  {name:<8} {clients:>4} clients: {level['rows_per_s']:8.1f} rows/s  "
              f"p50 {level['p50_ms']:7.1f} ms  p99 {level['p99_ms']:7.1f} ms  "
              f"errors {level['errors']}", flush=True)
        levels.append(level)
    return levels


# ---------------------------------------------------------------- the service


def _service_pid(port: int) -> int | None:
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        try:
            cmdline = process.info["cmdline"] or []
            if "app.cli" in cmdline and "serve" in cmdline and \
                    process.environ().get("TUNEFORGE_PORT") == str(port):
                return int(process.pid)
        except psutil.Error:
            continue
    return None


def _rss(pid: int | None) -> int | None:
    import psutil

    return int(psutil.Process(pid).memory_info().rss) if pid else None


def train_version(service: Service, args: argparse.Namespace) -> str:
    """A quick SST-2 classifier, trained through the service; returns its version id."""
    rows = read_jsonl(args.data / "train.jsonl", args.train_rows + 200)
    train_id = service.upload_rows("train.jsonl", rows[:args.train_rows], ("text", "label"))
    dev_id = service.upload_rows("dev.jsonl", rows[args.train_rows:], ("text", "label"))
    started = time.perf_counter()
    job = service.fine_tune(train_id, dev_id, args)
    print(f"trained {job['fine_tuned_model']} through the service in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    return str(job["fine_tuned_model"])


def measure_service(args: argparse.Namespace, texts: list[str],
                    artifacts: Path) -> tuple[dict[str, Any], Path]:
    with running_service(None) as base:
        service = Service(base)
        version = train_version(service, args)
        port = int(base.rsplit(":", 1)[1])
        pid = _service_pid(port)
        before = _rss(pid)
        first = service.client.post(f"/v1/models/{version}/predict", json={"inputs": "fine"})
        first.raise_for_status()
        after = _rss(pid)
        precision = first.headers.get("X-Tuneforge-Precision", "?")
        print(f"service serves {version} in {precision}", flush=True)
        levels = load_levels(port, f"/v1/models/{version}/predict",
                             {"Authorization": f"Bearer {API_KEY}"}, texts, args, "service")
    model_dir = _version_dir(artifacts)
    return {"version": version, "precision": precision, "levels": levels,
            "rss_before_load": before, "rss_after_load": after,
            "hot_model_rss_bytes": after - before if before and after else None}, model_dir


def _version_dir(artifacts: Path) -> Path:
    """The one model version the run trained, in the artifact folder it shared with us."""
    found = [p.parent for p in artifacts.rglob("config.json")
             if "models" in p.relative_to(artifacts).parts]
    if len(found) != 1:
        raise RuntimeError(f"expected one trained version under {artifacts}, found {found}")
    return found[0]


# ---------------------------------------------------------------- the naive server


def naive_server(model_dir: str, port: int) -> None:
    """What a user writes in ten minutes: FastAPI and a transformers pipeline, per request."""
    import uvicorn
    from fastapi import FastAPI
    from transformers import pipeline

    classify = pipeline("text-classification", model=model_dir, tokenizer=model_dir,
                        device=-1)
    app = FastAPI()

    @app.post("/predict")
    def predict(body: dict[str, Any]) -> Any:
        return classify(body["inputs"])

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


@contextmanager
def running_naive(model_dir: Path) -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "naive-server", str(model_dir),
                                str(port)], cwd=REPO, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.post(f"http://127.0.0.1:{port}/predict", json={"inputs": "fine"},
                              timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            raise RuntimeError("the naive server did not start")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def measure_naive(args: argparse.Namespace, texts: list[str], model_dir: Path) -> dict[str, Any]:
    with running_naive(model_dir) as port:
        return {"precision": "fp32",
                "levels": load_levels(port, "/predict", {}, texts, args, "naive")}


# ---------------------------------------------------------------- the model alone


def _probabilities(loaded: Any, texts: list[str], batch: int) -> tuple[Any, float]:
    """Softmax scores of every text (in input order), from length-sorted batches, and the
    seconds the batches took."""
    import torch

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.zeros(len(texts), loaded.model.config.num_labels)
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(order), batch):
            chunk = order[start:start + batch]
            encoded = loaded.tokenizer([texts[i] for i in chunk], truncation=True,
                                       max_length=loaded.max_length, padding=True,
                                       return_tensors="pt")
            logits = loaded.model(**encoded).logits.float()
            out[chunk] = torch.softmax(logits, dim=-1)
    return out, time.perf_counter() - started


def _arrival_groups(loaded: Any, texts: list[str], group: int) -> float:
    """Rows/s of the model alone when rows come `group` at a time in arrival order (as from
    `group` closed-loop clients), each group sorted and cut into passes as the service's
    runner does (app.ml.serving.forward_chunks): the limit for that many callers."""
    import torch

    from app.ml.serving import _Request, _Row, forward_chunks

    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(texts), group):
            request = _Request(texts[start:start + group], {}, "")
            request.lengths = loaded.count_tokens(request.inputs)
            rows = [_Row(request, i) for i in range(len(request.inputs))]
            for chunk in forward_chunks(rows, 8192):
                loaded.predict([row.text for row in chunk], {})
    return len(texts) / (time.perf_counter() - started)


def measure_alone(args: argparse.Namespace, texts: list[str], model_dir: Path,
                  precisions: list[str]) -> dict[str, Any]:
    from app.ml.inference import Precision, load_model
    from app.ml.tasks.classification import TextClassification

    results: dict[str, Any] = {}
    reference = None
    for precision in precisions:
        loaded = load_model(TextClassification(), model_dir, 128, cast(Precision, precision))
        _probabilities(loaded, texts[:128], ALONE_BATCH)  # warm up
        probs, seconds = _probabilities(loaded, texts, ALONE_BATCH)
        repeats = max(1, int(args.alone_seconds / max(seconds, 1e-3)))
        total = sum(_probabilities(loaded, texts, ALONE_BATCH)[1] for _ in range(repeats))
        single = []
        for text in texts[:args.single_rows]:
            single.append(_probabilities(loaded, [text], 1)[1])
        figures: dict[str, Any] = {
            "rows_per_s": repeats * len(texts) / total,
            # What N concurrent one-row callers allow: only N rows exist at once.
            "rows_per_s_in_arrival_groups": {n: _arrival_groups(loaded, texts, n)
                                             for n in args.clients if n > 1},
            "batch1_rows_per_s": len(single) / sum(single),
            "batch1_p50_ms": 1000 * statistics.median(single),
            "weights_bytes": loaded.size_bytes,
        }
        if reference is None:
            reference = probs
        else:
            figures["top1_agreement"] = float(
                (probs.argmax(-1) == reference.argmax(-1)).float().mean())
            figures["max_score_diff"] = float((probs - reference).abs().max())
        results[precision] = figures
        groups = ", ".join(f"{n} at a time {v:.1f}" for n, v in
                           figures["rows_per_s_in_arrival_groups"].items())
        print(f"  alone    {precision}: {figures['rows_per_s']:8.1f} rows/s (batches of "
              f"{ALONE_BATCH}), batch 1 p50 {figures['batch1_p50_ms']:.1f} ms; rows in arrival "
              f"order, {groups}"
              + (f", top-1 agreement with fp32 {100 * figures['top1_agreement']:.2f}%, "
                 f"largest score difference {figures['max_score_diff']:.4f}"
                 if "top1_agreement" in figures else ""), flush=True)
    return results


# ---------------------------------------------------------------- report


def report(service: dict[str, Any], naive: dict[str, Any] | None,
           alone: dict[str, Any]) -> list[str]:
    same = alone.get(service["precision"], {})
    lines = [f"\n{'clients':>7} {'service rows/s':>15} {'p50':>8} {'p99':>8} {'err':>5}"
             f" {'naive rows/s':>13} {'p50':>8} {'p99':>8} {'err':>5} {'x naive':>8}"
             f" {'x alone':>8} {'x group':>8}"]
    naive_levels = {lv["clients"]: lv for lv in (naive or {}).get("levels", [])}
    nan = float("nan")
    for level in service["levels"]:
        other = naive_levels.get(level["clients"], {})
        x_naive = _ratio(level["rows_per_s"], other.get("rows_per_s"))
        x_alone = _ratio(level["rows_per_s"], same.get("rows_per_s"))
        x_group = _ratio(level["rows_per_s"],
                         same.get("rows_per_s_in_arrival_groups", {}).get(level["clients"]))
        lines.append(
            f"{level['clients']:>7} {level['rows_per_s']:>15.1f} {level['p50_ms']:>8.1f}"
            f" {level['p99_ms']:>8.1f} {level['errors']:>5}"
            f" {other.get('rows_per_s', nan):>13.1f} {other.get('p50_ms', nan):>8.1f}"
            f" {other.get('p99_ms', nan):>8.1f} {other.get('errors', 0):>5}"
            f" {x_naive:>8} {x_alone:>8} {x_group:>8}")
    lines.append(f"x alone: against the model alone in {service['precision']}, length-sorted "
                 f"batches of {ALONE_BATCH} ({same.get('rows_per_s', float('nan')):.1f} rows/s)")
    lines.append("x group: against the model alone taking rows as that many one-row callers "
                 "send them (each group sorted and cut into passes as the service's runner does)")
    one = next((lv for lv in service["levels"] if lv["clients"] == 1), None)
    if one and same:
        lines.append(f"per-request overhead at 1 client: service p50 {one['p50_ms']:.1f} ms - "
                     f"forward of batch 1 {same['batch1_p50_ms']:.1f} ms = "
                     f"{one['p50_ms'] - same['batch1_p50_ms']:.1f} ms")
    if service.get("hot_model_rss_bytes") is not None:
        grown = service["hot_model_rss_bytes"] / 2**20
        lines.append(f"memory per hot model: service RSS +{grown:.0f} MiB on first load; "
                     f"weights {same.get('weights_bytes', 0) / 2**20:.0f} MiB in "
                     f"{service['precision']}")
    return lines


def _ratio(value: float, other: float | None) -> str:
    return f"{value / other:.2f}x" if other else "-"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="per load level")
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 8, 32, 128])
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--alone-seconds", type=float, default=10.0)
    parser.add_argument("--single-rows", type=int, default=200,
                        help="rows timed one at a time for the batch-1 forward")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "sst2")
    args = parser.parse_args(argv)
    # What fine_tune sends: a quick, real classifier.
    args.epochs, args.batch_size, args.learning_rate, args.max_length, args.seed = \
        1, 32, 1e-4, 128, 42
    return args


def main() -> None:
    args = parse_args()
    texts = [row["text"] for row in read_jsonl(args.data / "dev.jsonl")]
    with tempfile.TemporaryDirectory(prefix="tuneforge-serve-bench-") as artifacts:
        # The service keeps its versions here, so the other two sides load the same one.
        os.environ["TUNEFORGE_ARTIFACT_DIR"] = artifacts
        print(f"{len(texts)} SST-2 dev sentences, one per request; "
              f"{args.seconds:.0f} s per level", flush=True)
        service, model_dir = measure_service(args, texts, Path(artifacts))
        naive = None if args.skip_naive else measure_naive(args, texts, model_dir)
        precisions = ["fp32"] + [p for p in ("bf16", "int8") if p != "fp32"]
        alone = measure_alone(args, texts, model_dir, precisions)
    for line in report(service, naive, alone):
        print(line)
    write_results("serve", args, {"service": service, "naive": naive, "alone": alone})


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "naive-server":
        naive_server(sys.argv[2], int(sys.argv[3]))
    else:
        main()
