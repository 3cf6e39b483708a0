"""Where datasets, checkpoints and model versions live. Keys are server-made, never client ids.

`TUNEFORGE_ARTIFACT_URL` unset: a folder (`LocalArtifactStore`), shared by every machine
through a mount if there are several. Set to `s3://bucket/prefix`: an S3-compatible bucket
(`app/storage/s3.py`), each machine keeping a local cache in the artifact folder.
"""

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

CHUNK = 1024 * 1024


class ArtifactStore(Protocol):
    def new_key(self, kind: str) -> str: ...

    def local_path(self, key: str) -> Path:
        """A local path for the artifact (a cache for remote stores, filled on first use)."""
        ...

    def work_dir(self, key: str) -> Path:
        """A local folder to write the artifact's files into (a job's checkpoints); never
        filled from elsewhere."""
        ...

    def cached_path(self, key: str) -> Path | None:
        """The artifact's local copy if this machine has one, without fetching it."""
        ...

    def chunks(self, key: str) -> Iterator[bytes]:
        """A file artifact's bytes, a chunk at a time."""
        ...

    def put_file(self, source: Path, key: str) -> None: ...

    def put_tree(self, source: Path, key: str) -> None: ...

    def put_checkpoint(self, directory: Path, key: str) -> None:
        """Publish a checkpoint just written under work_dir: its manifest last."""
        ...

    def fetch_checkpoints(self, key: str) -> None:
        """Bring a job's checkpoints that this machine lacks into work_dir(key): whatever
        resuming and choosing the version need."""
        ...

    def drop_resume_state(self, key: str) -> None:
        """Once a job is over: remove the optimizer, scheduler and RNG state of its
        checkpoints from elsewhere (work_dir's own copies are the caller's)."""
        ...

    def delete(self, key: str) -> None: ...


def read_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def remove_local(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class LocalArtifactStore:
    """A folder on local disk (or a shared mount for several machines)."""

    def __init__(self, root: Path):
        self.root = root.resolve()

    def new_key(self, kind: str) -> str:
        return new_key(kind)

    def local_path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        # Keys are ours, but a corrupted row must still never reach outside the root.
        if not path.is_relative_to(self.root):
            raise ValueError("artifact key escapes the artifact root")
        return path

    def work_dir(self, key: str) -> Path:
        return self.local_path(key)

    def cached_path(self, key: str) -> Path | None:
        return self.local_path(key)

    def chunks(self, key: str) -> Iterator[bytes]:
        return read_chunks(self.local_path(key))

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

    def put_checkpoint(self, directory: Path, key: str) -> None:
        if directory.resolve() != self.local_path(key):
            self.put_tree(directory, key)

    def fetch_checkpoints(self, key: str) -> None:
        """Every machine sees the one folder: nothing to fetch."""

    def drop_resume_state(self, key: str) -> None:
        """The work folder is the store: the caller's clean-up there is all there is."""

    def delete(self, key: str) -> None:
        remove_local(self.local_path(key))


def new_key(kind: str) -> str:
    return f"{kind}/{uuid.uuid4().hex}"


def artifact_store(root: Path, url: str | None = None) -> ArtifactStore:
    """The store: the folder `root`, or with `url` (s3://bucket/prefix) that bucket, with
    `root` as this machine's cache."""
    root.mkdir(parents=True, exist_ok=True)
    if url:
        from app.storage.s3 import S3ArtifactStore  # boto3 is only needed with a bucket

        return S3ArtifactStore.from_url(url, root)
    return LocalArtifactStore(root)
