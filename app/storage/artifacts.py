"""Where datasets, checkpoints and model versions live. Keys are server-made, never client ids."""

import shutil
import uuid
from pathlib import Path
from typing import Protocol


class ArtifactStore(Protocol):
    def new_key(self, kind: str) -> str: ...

    def local_path(self, key: str) -> Path:
        """A local path for the artifact (a cache for remote stores)."""
        ...

    def put_file(self, source: Path, key: str) -> None: ...

    def put_tree(self, source: Path, key: str) -> None: ...

    def delete(self, key: str) -> None: ...


class LocalArtifactStore:
    """A folder on local disk (or a shared mount for several machines)."""

    def __init__(self, root: Path):
        self.root = root.resolve()

    def new_key(self, kind: str) -> str:
        return f"{kind}/{uuid.uuid4().hex}"

    def local_path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        # Keys are ours, but a corrupted row must still never reach outside the root.
        if not path.is_relative_to(self.root):
            raise ValueError("artifact key escapes the artifact root")
        return path

    def put_file(self, source: Path, key: str) -> None:
        target = self.local_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), target)

    def put_tree(self, source: Path, key: str) -> None:
        target = self.local_path(key)
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging)
        # A rename is atomic: readers see no version or a complete one.
        staging.rename(target)

    def delete(self, key: str) -> None:
        path = self.local_path(key)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def artifact_store(root: Path) -> ArtifactStore:
    root.mkdir(parents=True, exist_ok=True)
    return LocalArtifactStore(root)
