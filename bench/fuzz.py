"""The long fuzz: schemathesis with every check against a served instance, 30 minutes.

The same run as tests/security/test_schemathesis.py (a real `tuneforge serve`, a trained
model with its file and job, their ids given to schemathesis, every phase, two workers,
DELETE in a second pass), for as long as asked. Prints the figures and writes them to
bench/results/fuzz-<timestamp>.json; exits 1 if schemathesis found anything.

    python bench/fuzz.py                                   # embedded default, 30 minutes
    python bench/fuzz.py --minutes 4
    python bench/fuzz.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/fuzz \\
        --broker-url redis://127.0.0.1:6379/5              # PostgreSQL + Redis
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.live import live_service  # noqa: E402
from tests.security.fuzz import fuzz, seed, service_env, tiny_models  # noqa: E402

RESULTS = REPO / "bench" / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0,
                        help="total time budget; a fifth goes to the DELETE pass")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--database-url", help="e.g. a PostgreSQL database, empty")
    parser.add_argument("--broker-url", help="e.g. redis://127.0.0.1:6379/5")
    args = parser.parse_args()
    total_s = int(args.minutes * 60)
    delete_s = max(15, total_s // 5)
    with tempfile.TemporaryDirectory(prefix="tuneforge-fuzz-") as scratch:
        root = Path(scratch)
        env = service_env(tiny_models(root / "models"))
        if args.database_url:
            env["TUNEFORGE_DATABASE_URL"] = args.database_url
        if args.broker_url:
            env["TUNEFORGE_BROKER_URL"] = args.broker_url
        with live_service(root / "service", env_overrides=env) as service:
            ids = seed(service)
            passes = fuzz(service, ids, root / "fuzz", total_s - delete_s, delete_s,
                          args.workers)
            healthz = httpx.get(f"{service.base_url}/healthz", timeout=10).status_code
    deployment = "postgres+redis" if args.database_url else "embedded"
    figures = {"deployment": deployment, "workers": args.workers, "healthz_after": healthz,
               "passes": [{"name": p.name, "seconds": round(p.seconds), "exit_code": p.exit_code,
                           **p.summary} for p in passes]}
    for run in passes:
        print(f"{deployment} {run.name}: {run.cases} cases in {run.seconds:.0f}s, "
              f"{run.failures} failures, statuses {run.summary.get('statuses')}")
        if run.exit_code != 0:
            print(run.tail(200))
    print(f"/healthz after: {healthz}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"fuzz-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(f"figures: {out}")
    clean = all(p.exit_code == 0 for p in passes) and healthz == 200
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
