"""schemathesis, as a new user runs it, against a served instance with real ids.

A real `tuneforge serve` (tests/live.py) with a tiny base model, seeded with a trained model,
its file and job, an alias and a spare key, whose ids go to schemathesis as the values of
the path parameters that take them. `st run` then runs every phase (examples, coverage,
fuzzing, stateful over the spec's links) with every check, in two passes: everything but
DELETE first, so the real ids live until the second pass deletes them.

Shared by tests/security/test_schemathesis.py (a short run per database) and bench/fuzz.py
(the long run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.live import REPO_ROOT, LiveService, expect, jsonl_bytes, wait_for_job
from tests.unit.tiny_model import build_tiny_bert, sentiment_rows

TINY_MODEL = "tiny-bert"
SUFFIX = "fuzzed"
ALIAS = "production"
PHASES = "examples,coverage,fuzzing,stateful"
# The DELETE operations yield no ids, so no links start from them: no stateful phase there.
DELETE_PHASES = "examples,coverage,fuzzing"
HOOKS = "tests.security.fuzz_hooks"
# The fuzz would otherwise mostly measure the rate limiter (its 429s are declared, and
# checked, all the same).
SERVICE_ENV = {"TUNEFORGE_RATE_LIMIT_PER_MINUTE": "10000000",
               "TUNEFORGE_PREDICT_ROWS_PER_MINUTE": "100000000",
               "TUNEFORGE_MAX_ACTIVE_JOBS_PER_PROJECT": "4"}
# What a schema cannot say: whether an uploaded file's rows parse (415/422 with the line and
# field), whether a job's base model exists (422 model_not_found), and whether a version is a
# LoRA adapter (422 not_an_adapter for ?format=adapter). Valid-looking requests may get those;
# every other refusal of schema-valid data is a failure.
CONTENT_CHECKED = {"POST /v1/files": ["2xx", "401", "404", "409", "413", "415", "422", "429"],
                   "POST /v1/fine_tuning/jobs": ["2xx", "401", "404", "409", "422", "429"],
                   "GET /v1/models/{model_id}/content": ["2xx", "401", "404", "409", "422",
                                                         "429"]}

# schemathesis's own list of statuses that refuse a request, and 413: a body over a limit the
# spec states (predict's caps) is refused as too large.
REJECTIONS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429",
              "5xx"]


@dataclass
class RealIds:
    file_id: str
    job_id: str
    model_id: str
    name: str
    alias: str
    key_id: str

    def parameters(self) -> dict[str, str]:
        return {"path.file_id": self.file_id, "path.job_id": self.job_id,
                "path.model_id": self.model_id, "path.name": self.name,
                "path.alias": self.alias, "path.key_id": self.key_id}


@dataclass
class Pass:
    name: str
    exit_code: int
    seconds: float
    output: str
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def failures(self) -> int:
        return int(self.summary.get("failures", -1))

    @property
    def cases(self) -> int:
        return int(self.summary.get("cases", 0))

    def tail(self, lines: int = 120) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


def service_env(models_dir: Path, **overrides: str) -> dict[str, str]:
    return {"TUNEFORGE_MODELS_DIR": str(models_dir), **SERVICE_ENV, **overrides}


def tiny_models(root: Path) -> Path:
    build_tiny_bert(root / TINY_MODEL)
    return root


def seed(service: LiveService) -> RealIds:
    """A trained model with its file and job, an alias on it, and a key to revoke."""
    with service.client() as client:
        file_id = expect(client.post(
            "/v1/files", data={"purpose": "fine-tune"},
            files={"file": ("reviews.jsonl", jsonl_bytes(sentiment_rows(40)),
                            "application/jsonl")}))["id"]
        job_id = expect(client.post("/v1/fine_tuning/jobs", json={
            "model": TINY_MODEL, "training_file": file_id, "suffix": SUFFIX,
            "hyperparameters": {"n_epochs": 1, "batch_size": 8}}), 201)["id"]
        model_id = wait_for_job(service, client, job_id, timeout_s=300)["fine_tuned_model"]
        expect(client.put(f"/v1/registry/{SUFFIX}/aliases/{ALIAS}", json={"version": model_id}))
        key_id = expect(client.post("/v1/admin/keys", json={"project": "spare"}), 201)["id"]
    return RealIds(file_id=file_id, job_id=job_id, model_id=model_id, name=SUFFIX, alias=ALIAS,
                   key_id=key_id)


def config_toml(ids: RealIds) -> str:
    lines = [f"hooks = {json.dumps(HOOKS)}", "", "[parameters]"]
    lines += [f"{json.dumps(key)} = {json.dumps(value)}"
              for key, value in ids.parameters().items()]
    lines += ["", "[checks.negative_data_rejection]",
              f"expected-statuses = {json.dumps(REJECTIONS)}"]
    for label, statuses in CONTENT_CHECKED.items():
        method, path = label.split(" ", 1)
        lines += ["", "[[operations]]", f"include-method = {json.dumps(method)}",
                  f"include-path = {json.dumps(path)}",
                  "checks.positive_data_acceptance.expected-statuses = "
                  f"{json.dumps(statuses)}"]
    return "\n".join(lines) + "\n"


def run_pass(service: LiveService, ids: RealIds, work: Path, name: str, methods: list[str],
             phases: str, max_time_s: int, workers: int = 2) -> Pass:
    """One `st run` over the served spec; the exit code is 0 only without failures."""
    work.mkdir(parents=True, exist_ok=True)
    config = work / "schemathesis.toml"
    config.write_text(config_toml(ids), encoding="utf-8")
    report = work / f"{name}.ndjson"
    command = [str(Path(sys.executable).parent / "st"), "--config-file", str(config), "--no-color",
               "run", f"{service.base_url}/openapi.json",
               "-H", f"Authorization: Bearer {service.api_key}",
               "--checks", "all", "--phases", phases, "--workers", str(workers),
               "--max-time", str(max_time_s), "--request-timeout", "60",
               "--report", "ndjson", "--report-ndjson-path", str(report), *methods]
    started = time.monotonic()
    # The hooks module is imported from this checkout.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True,
                          timeout=max_time_s * 3 + 300, stdin=subprocess.DEVNULL)
    result = Pass(name, done.returncode, time.monotonic() - started, done.stdout + done.stderr)
    result.summary = summarize(report)
    return result


def fuzz(service: LiveService, ids: RealIds, work: Path, max_time_s: int,
         delete_time_s: int, workers: int = 2) -> list[Pass]:
    return [run_pass(service, ids, work / "main", "main", ["--exclude-method", "DELETE"],
                     PHASES, max_time_s, workers),
            run_pass(service, ids, work / "delete", "delete", ["--include-method", "DELETE"],
                     DELETE_PHASES, delete_time_s, workers)]


def summarize(report: Path) -> dict[str, Any]:
    """Cases sent, failures found, and the statuses answered, from the ndjson event log."""
    statuses: dict[str, int] = {}
    failures = 0
    cases = 0
    if not report.exists():
        return {}
    for line in report.read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        for kind, body in event.items():
            if kind != "ScenarioFinished":
                continue
            for case in (body.get("recorder") or {}).get("interactions", {}).values():
                response = case.get("response") or {}
                if "status_code" in response:
                    cases += 1
                    key = str(response["status_code"])
                    statuses[key] = statuses.get(key, 0) + 1
            for check_list in (body.get("recorder") or {}).get("checks", {}).values():
                failures += sum(1 for check in check_list if check.get("status") == "failure")
    return {"cases": cases, "failures": failures, "statuses": dict(sorted(statuses.items()))}
