"""Generated requests from /openapi.json: never a server error; without a key, only 401s."""

import contextlib
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.security.service import Service, running_service

OPEN_ROUTES = {"/healthz", "/readyz"}
EXAMPLES = settings(max_examples=20, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running_service(tmp_path_factory.mktemp("fuzz")) as service:
        # Some real objects, so generated requests also reach code past the 404s.
        file_id = service.upload(service.admin_key)
        service.train(service.admin_key, file_id, suffix="fuzzed")
        yield service


def operations(service: Service) -> list:
    schema = schemathesis.openapi.from_asgi("/openapi.json", service.client.app)
    return [result.ok() for result in schema.get_all_operations()]


def statuses_for(operation, mode: GenerationMode, headers: dict[str, str]) -> list[int]:
    seen: list[int] = []

    @EXAMPLES
    @given(operation.as_strategy(generation_mode=mode))
    def call(case) -> None:  # noqa: ANN001
        seen.append(case.call(headers=headers).status_code)

    # Unsatisfiable: nothing to make invalid (an operation without parameters or body).
    with contextlib.suppress(Unsatisfiable):
        call()
    return seen


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_gets_a_server_error(live: Service, mode: GenerationMode) -> None:
    failures = {}
    for operation in operations(live):
        statuses = statuses_for(operation, mode, live.headers())
        errors = [s for s in statuses if s >= 500]
        if errors:
            failures[f"{operation.method.upper()} {operation.path}"] = errors
    assert not failures


def test_without_a_key_everything_but_health_is_401(live: Service) -> None:
    unexpected = {}
    for operation in operations(live):
        if operation.path in OPEN_ROUTES:
            continue
        statuses = statuses_for(operation, GenerationMode.POSITIVE, {})
        if set(statuses) - {401}:
            unexpected[f"{operation.method.upper()} {operation.path}"] = sorted(set(statuses))
    assert not unexpected
