"""schemathesis with all of its checks, over HTTP, against a served instance with real ids.

Every phase, the stateful one following the spec's links, two workers, a bounded time per
deployment: the embedded default, and PostgreSQL + Redis. Not one failure (a 5xx, an
undeclared status, a body off its schema, a schema-valid request refused or a
schema-violating one accepted, a wrong Allow, ...), and the service is healthy afterwards.
`bench/fuzz.py` runs the same for 30 minutes.
"""

import os
import re
from pathlib import Path

import httpx
import pytest

from tests.live import live_service
from tests.security.fuzz import Pass, fuzz, seed, service_env, tiny_models

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
# About a minute and a half per deployment, service start and training included.
MAIN_S = int(os.environ.get("TUNEFORGE_TEST_FUZZ_SECONDS", "45"))
DELETE_S = 15


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models(tmp_path_factory.mktemp("fuzz-models"))


def figures(deployment: str, passes: list[Pass]) -> str:
    lines = []
    for run in passes:
        seed_line = re.search(r"Seed: (\d+)", run.output)
        lines.append(f"fuzz {deployment} {run.name}: {run.cases} cases in {run.seconds:.0f}s, "
                     f"{run.failures} failures, statuses {run.summary.get('statuses')}, "
                     f"seed {seed_line.group(1) if seed_line else '?'}")
    return "\n".join(lines)


@pytest.mark.parametrize("deployment", ["embedded", pytest.param("postgres",
                                                                 marks=pytest.mark.postgres)])
def test_the_fuzzer_finds_nothing(deployment: str, tmp_path: Path, models_dir: Path,
                                  request: pytest.FixtureRequest) -> None:
    env = service_env(models_dir)
    if deployment == "postgres":
        env["TUNEFORGE_DATABASE_URL"] = request.getfixturevalue("postgres_url")
        env["TUNEFORGE_BROKER_URL"] = request.getfixturevalue("redis_url")
    with live_service(tmp_path / "service", env_overrides=env) as service:
        ids = seed(service)
        passes = fuzz(service, ids, tmp_path / "fuzz", MAIN_S, DELETE_S)
        health = httpx.get(f"{service.base_url}/healthz", timeout=10)
        service.check_alive()
    print(figures(deployment, passes))
    for run in passes:
        assert run.exit_code == 0, f"schemathesis {run.name} pass:\n{run.tail()}"
        assert run.failures == 0, run.summary
    main, delete = passes
    # It reached past the 404s: the real ids were served, and the DELETE pass deleted them.
    assert main.cases >= 300 and main.summary["statuses"].get("200", 0) > 0, main.summary
    assert delete.summary["statuses"].get("200", 0) > 0, delete.summary
    assert health.status_code == 200
