"""Artifacts in an S3-compatible bucket, for API and workers on machines with no shared disk.

Every object lives under `s3://bucket/prefix/<key>`, keys server-made and checked to be plain
relative names (no `..`, no leading `/`), so none reaches outside the prefix. Each machine
keeps a local cache in its artifact folder: `local_path` downloads an artifact there on first
use (a file, or a whole model folder) into a temporary sibling and renames it into place, so
a concurrent reader sees nothing or all of it. Uploads and downloads go through boto3's
managed transfer, which streams from and to disk in parts (multipart above 8 MiB).

Checkpoints keep "manifest last = whole": a checkpoint folder is uploaded once written, its
manifest object last, so a worker on another machine resumes from the newest checkpoint whose
manifest object exists.
"""

import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from app.errors import StorageUnavailable
from app.ml.checkpoints import is_complete, upload_order, whole_remote_checkpoints
from app.storage.artifacts import CHUNK, LocalArtifactStore, new_key, remove_local

_URL = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<prefix>.*))?$")
_KEY_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
# Files only resuming reads (optimizer, scheduler, RNG state, all pickles): a resumed job needs
# them from its newest checkpoint only; its earlier checkpoints need their weights alone.
_RESUME_ONLY_SUFFIXES = (".pt", ".pth", ".bin")
# Answers that mean "the store is down or busy, try again", not "this request is wrong".
_OUTAGE_CODES = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"})
TRANSFER = TransferConfig(multipart_threshold=8 * CHUNK, multipart_chunksize=8 * CHUNK,
                          max_concurrency=4)


def parse_url(url: str) -> tuple[str, str]:
    """`s3://bucket/prefix` as (bucket, prefix without slashes at either end)."""
    match = _URL.match(url)
    if match is None:
        raise ValueError(f"artifact URL {url!r} is not s3://bucket[/prefix]")
    prefix = (match.group("prefix") or "").strip("/")
    if prefix and not all(_KEY_PART.match(part) for part in prefix.split("/")):
        raise ValueError(f"artifact URL {url!r} has an unusable prefix")
    return match.group("bucket"), prefix


def check_key(key: str) -> str:
    """A key as the store made it: relative parts of plain characters, never `..`."""
    if not key or not all(_KEY_PART.match(part) for part in key.split("/")):
        raise ValueError(f"artifact key {key!r} escapes the artifact prefix")
    return key


class S3ArtifactStore:
    """A bucket (under a prefix) for every machine, and a cache folder on each."""

    def __init__(self, client: Any, bucket: str, prefix: str, cache_root: Path):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.cache = LocalArtifactStore(cache_root)
        self.root = self.cache.root
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    @classmethod
    def from_url(cls, url: str, cache_root: Path) -> "S3ArtifactStore":
        bucket, prefix = parse_url(url)
        # Endpoint, credentials and region come from boto3's own settings: AWS_ENDPOINT_URL,
        # AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or a role), AWS_DEFAULT_REGION.
        return cls(boto3.client("s3"), bucket, prefix, cache_root)

    # ------------------------------------------------------------ names

    def new_key(self, kind: str) -> str:
        return new_key(kind)

    def object_name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _local(self, key: str) -> Path:
        return self.cache.local_path(check_key(key))

    def _names(self, key: str) -> list[str]:
        """What the bucket holds at `key`: `""` for a file, else names relative to the folder."""
        base = self.object_name(key)
        names = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base):
            for entry in page.get("Contents", []):
                name = entry["Key"]
                if name == base:
                    names.append("")
                elif name.startswith(base + "/"):
                    names.append(name[len(base) + 1:])
        return names

    # ------------------------------------------------------------ reading

    def local_path(self, key: str) -> Path:
        target = self._local(key)
        if target.exists():
            return target
        with self._lock(key), reaching_bucket():
            if not target.exists():
                names = self._names(key)
                if names == [""]:
                    self._download_file(key, target)
                elif names:
                    self._download_tree(key, [n for n in names if n], target)
        # Nothing in the bucket either: the caller gets the path, as from a folder.
        return target

    def work_dir(self, key: str) -> Path:
        return self._local(key)

    def cached_path(self, key: str) -> Path | None:
        target = self._local(key)
        return target if target.exists() else None

    def chunks(self, key: str) -> Iterator[bytes]:
        # The object is asked for now, so an outage is an answer (503), not a cut stream.
        with reaching_bucket():
            body = self.client.get_object(Bucket=self.bucket, Key=self.object_name(key))["Body"]
        return _streamed(body)

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def _download_file(self, key: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = _staging(target)
        try:
            self.client.download_file(self.bucket, self.object_name(key), str(staging),
                                      Config=TRANSFER)
            staging.replace(target)
        finally:
            staging.unlink(missing_ok=True)

    def _download_tree(self, key: str, names: list[str], target: Path,
                       replace: bool = False) -> None:
        """Download `names` of the folder `key` next to `target`, then rename it into place."""
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = _staging(target)
        try:
            for name in names:
                destination = staging / check_key(name)
                destination.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(self.bucket, self.object_name(f"{key}/{name}"),
                                          str(destination), Config=TRANSFER)
            if replace and target.exists():
                _swap(staging, target)
            else:
                _rename_unless_there(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # ------------------------------------------------------------ writing

    def put_file(self, source: Path, key: str) -> None:
        with reaching_bucket():
            self.client.upload_file(str(source), self.bucket, self.object_name(key),
                                    Config=TRANSFER)
        source.unlink(missing_ok=True)  # as a local store moves it: the upload is the copy

    def put_tree(self, source: Path, key: str) -> None:
        with reaching_bucket():
            for path in upload_order(source):  # a manifest, where there is one, goes last
                name = path.relative_to(source).as_posix()
                self.client.upload_file(str(path), self.bucket,
                                        self.object_name(f"{key}/{name}"), Config=TRANSFER)

    def put_checkpoint(self, directory: Path, key: str) -> None:
        self.put_tree(directory, key)

    def fetch_checkpoints(self, key: str) -> None:
        """For each run under `key` (the job, or each search trial): its newest whole
        checkpoint in full, unless this machine has it whole, and the weights of the earlier
        ones it lacks (any of them may become the version)."""
        with reaching_bucket():
            self._fetch_checkpoints(key)

    def _fetch_checkpoints(self, key: str) -> None:
        names = self._names(key)
        for _, checkpoints in whole_remote_checkpoints(names).items():
            (_, newest), *earlier = checkpoints
            target = self._local(f"{key}/{newest}")
            if not is_complete(target, verify_hashes=False):
                self._download_tree(f"{key}/{newest}", _inside(names, newest), target,
                                    replace=True)
            for _, folder in earlier:
                target = self._local(f"{key}/{folder}")
                if not target.exists():
                    weights = [n for n in _inside(names, folder)
                               if not n.endswith(_RESUME_ONLY_SUFFIXES)]
                    self._download_tree(f"{key}/{folder}", weights, target)

    def drop_resume_state(self, key: str) -> None:
        with reaching_bucket():
            names = self._names(key)
            resume_only = [name for name in names if name.endswith(_RESUME_ONLY_SUFFIXES)]
            self._delete_objects([f"{self.object_name(key)}/{name}" for name in resume_only])

    def delete(self, key: str) -> None:
        base = self.object_name(key)
        with reaching_bucket():
            self._delete_objects([base if name == "" else f"{base}/{name}"
                                  for name in self._names(key)])
        remove_local(self._local(key))

    def _delete_objects(self, names: list[str]) -> None:
        for start in range(0, len(names), 1000):  # the most one request may delete
            batch = [{"Key": name} for name in names[start:start + 1000]]
            self.client.delete_objects(Bucket=self.bucket,
                                       Delete={"Objects": batch, "Quiet": True})


@contextmanager
def reaching_bucket() -> Iterator[None]:
    """Turn the bucket being unreachable, down or throttling into StorageUnavailable (503
    with Retry-After at the API); other errors, such as a missing object, stay as they are."""
    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _OUTAGE_CODES or status >= 500:
            raise StorageUnavailable("The artifact store is unavailable; retry shortly.") \
                from exc
        raise
    except BotoCoreError as exc:  # connection refused, timeouts, DNS
        raise StorageUnavailable("The artifact store is unavailable; retry shortly.") from exc


def _streamed(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(CHUNK)
    finally:
        body.close()


def _inside(names: list[str], folder: str) -> list[str]:
    return [name[len(folder) + 1:] for name in names if name.startswith(folder + "/")]


def _staging(target: Path) -> Path:
    """A hidden sibling of `target` of its own: concurrent downloads never share one."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")


def _rename_unless_there(staging: Path, target: Path) -> None:
    try:
        staging.rename(target)
    except OSError:
        if not target.exists():
            raise
        # Another download of the same artifact got there first: same bytes, keep that one.


def _swap(staging: Path, target: Path) -> None:
    """Replace a torn local folder with a whole download."""
    old = target.with_name(f".{target.name}.{uuid.uuid4().hex}.old")
    os.rename(target, old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
