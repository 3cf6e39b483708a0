from collections.abc import Iterator

import pytest

from tests.security.service import Service, running_service


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running_service(tmp_path_factory.mktemp("security")) as running:
        yield running
