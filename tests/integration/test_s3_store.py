"""The S3 artifact store against a real S3-compatible server (moto, tests/s3.py): files and
model folders round-trip through the bucket, big files go up in parts and come back in
chunks, a machine's cache fills atomically, keys never leave the prefix, and a resuming
machine finds the newest checkpoint whose manifest made it to the bucket."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from app.ml.checkpoints import MANIFEST, is_complete, latest_complete_checkpoint, write_manifest
from app.storage.artifacts import CHUNK, artifact_store
from app.storage.s3 import S3ArtifactStore, parse_url
from tests.s3 import S3Bucket

pytestmark = pytest.mark.timeout(120)


def machine(bucket: S3Bucket, cache: Path) -> S3ArtifactStore:
    """The store as one machine sees it: the shared bucket, its own cache folder."""
    _, prefix = parse_url(bucket.url)
    return S3ArtifactStore(bucket.server.client(), bucket.name, prefix, cache)


def model_folder(root: Path, weights: bytes = b"weights" * 1000) -> Path:
    (root / "tokenizer").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(weights)
    (root / "config.json").write_text('{"labels": 2}')
    (root / "tokenizer" / "vocab.txt").write_text("[PAD]\nhello\n")
    return root


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_store_is_chosen_by_the_artifact_url(tmp_path: Path, s3_bucket: S3Bucket,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_bucket.env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    store = artifact_store(tmp_path / "cache", s3_bucket.url)
    assert isinstance(store, S3ArtifactStore)
    source = tmp_path / "upload"
    source.write_bytes(b"through boto3's own settings")
    store.put_file(source, "files/abc")
    assert s3_bucket.objects() == {"files/abc": 28}


def test_file_round_trip_and_delete(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    api, worker = machine(s3_bucket, tmp_path / "api"), machine(s3_bucket, tmp_path / "worker")
    source = tmp_path / "upload.jsonl"
    source.write_bytes(b'{"text": "hi", "label": "a"}\n')
    key = api.new_key("files")
    api.put_file(source, key)
    assert not source.exists()  # moved, as the folder store moves it
    assert api.cached_path(key) is None  # the uploading machine keeps no copy
    assert b"".join(api.chunks(key)) == b'{"text": "hi", "label": "a"}\n'

    path = worker.local_path(key)
    assert path == worker.root / key and path.read_bytes() == b'{"text": "hi", "label": "a"}\n'
    assert worker.cached_path(key) == path
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]

    worker.delete(key)
    assert s3_bucket.objects() == {} and not path.exists()
    worker.delete(key)  # nothing there: no error


def test_model_folder_round_trip_and_delete(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    worker, api = machine(s3_bucket, tmp_path / "worker"), machine(s3_bucket, tmp_path / "api")
    source = model_folder(tmp_path / "checkpoint")
    key = worker.new_key("models")
    worker.put_tree(source, key)
    assert files_of(api.local_path(key)) == files_of(source)
    assert source.is_dir()  # a copy: the job's checkpoint stays
    api.delete(key)
    assert s3_bucket.objects() == {}
    assert not (tmp_path / "api" / key).exists()


def test_delete_removes_only_the_key_not_a_longer_name(tmp_path: Path,
                                                       s3_bucket: S3Bucket) -> None:
    store = machine(s3_bucket, tmp_path / "cache")
    for key in ("files/abc", "files/abcd"):
        (tmp_path / "f").write_bytes(key.encode())
        store.put_file(tmp_path / "f", key)
    store.put_tree(model_folder(tmp_path / "m"), "models/abc")
    store.delete("files/abc")
    store.delete("models/ab")  # a prefix of another key's name, not a key: nothing goes
    assert sorted(s3_bucket.objects()) == ["files/abcd", "models/abc/config.json",
                                           "models/abc/model.safetensors",
                                           "models/abc/tokenizer/vocab.txt"]


def test_big_files_go_up_in_parts_and_come_back_in_chunks(tmp_path: Path,
                                                          s3_bucket: S3Bucket) -> None:
    store = machine(s3_bucket, tmp_path / "cache")
    source = tmp_path / "big.jsonl"
    block = os.urandom(CHUNK)
    with source.open("wb") as out:
        for _ in range(20):
            out.write(block)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    store.put_file(source, "files/big")
    head = s3_bucket.server.client().head_object(Bucket=s3_bucket.name,
                                                 Key=store.object_name("files/big"))
    assert head["ContentLength"] == 20 * CHUNK
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload of 8 MiB parts

    streamed = hashlib.sha256()
    sizes = []
    for chunk in store.chunks("files/big"):
        sizes.append(len(chunk))
        streamed.update(chunk)
    assert streamed.hexdigest() == digest
    assert max(sizes) <= CHUNK and sum(sizes) == 20 * CHUNK
    assert hashlib.sha256(store.local_path("files/big").read_bytes()).hexdigest() == digest


def test_concurrent_readers_see_no_folder_or_a_whole_one(tmp_path: Path,
                                                         s3_bucket: S3Bucket) -> None:
    worker = machine(s3_bucket, tmp_path / "worker")
    source = model_folder(tmp_path / "checkpoint", weights=os.urandom(12 * CHUNK))
    worker.put_tree(source, "models/v1")
    expected = files_of(source)
    # Two API processes of one machine: two stores over one cache folder.
    stores = [machine(s3_bucket, tmp_path / "api"), machine(s3_bucket, tmp_path / "api")]
    target = tmp_path / "api" / "models" / "v1"
    seen_partial: list[list[str]] = []
    results: list[dict[str, bytes]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if target.exists():
                names = sorted(files_of(target)) if target.is_dir() else ["<a file>"]
                if names != sorted(expected):
                    seen_partial.append(names)

    def read(store: S3ArtifactStore) -> None:
        results.append(files_of(store.local_path("models/v1")))

    watcher = threading.Thread(target=watch)
    readers = [threading.Thread(target=read, args=(stores[i % 2],)) for i in range(6)]
    watcher.start()
    for thread in readers:
        thread.start()
    for thread in readers:
        thread.join(60)
    done.set()
    watcher.join(10)
    assert seen_partial == []
    assert len(results) == 6 and all(result == expected for result in results)
    leftovers = [p.name for p in target.parent.iterdir() if p.name != "v1"]
    assert leftovers == []


def test_a_failed_download_leaves_nothing_in_the_cache(tmp_path: Path,
                                                       s3_bucket: S3Bucket) -> None:
    machine(s3_bucket, tmp_path / "worker").put_tree(model_folder(tmp_path / "m"), "models/v1")
    api = machine(s3_bucket, tmp_path / "api")
    calls = {"n": 0}

    def fail_second_get(**_: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("connection reset mid-download")

    api.client.meta.events.register("before-call.s3.GetObject", fail_second_get)
    with pytest.raises(RuntimeError, match="mid-download"):
        api.local_path("models/v1")
    assert list((tmp_path / "api" / "models").iterdir()) == []
    api.client.meta.events.unregister("before-call.s3.GetObject", fail_second_get)
    assert sorted(files_of(api.local_path("models/v1"))) == [
        "config.json", "model.safetensors", "tokenizer/vocab.txt"]


@pytest.mark.parametrize("key", ["..", "../x", "files/../../x", "/etc/passwd", "files//x",
                                 "files/./x", "", "files/.hidden", "files/a b", "files\\..\\x"])
def test_keys_escaping_the_prefix_are_refused(tmp_path: Path, s3_bucket: S3Bucket,
                                              key: str) -> None:
    store = machine(s3_bucket, tmp_path / "cache")
    (tmp_path / "f").write_text("x")
    for call in (lambda: store.local_path(key), lambda: store.put_file(tmp_path / "f", key),
                 lambda: store.delete(key), lambda: store.work_dir(key),
                 lambda: store.fetch_checkpoints(key), lambda: next(iter(store.chunks(key)))):
        with pytest.raises(ValueError, match="escapes"):
            call()
    assert s3_bucket.objects() == {}


@pytest.mark.parametrize("url", ["s3://", "s3://B/x", "http://bucket/x", "s3://bucket/../x",
                                 "s3://bucket/a//b"])
def test_unusable_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_url(url)


# ------------------------------------------------------------------ checkpoints


def checkpoint(run: Path, step: int, whole: bool = True) -> Path:
    folder = run / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(f"weights at {step}".encode())
    (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    (folder / "optimizer.pt").write_bytes(f"optimizer at {step}".encode())
    if whole:
        write_manifest(folder)
    return folder


def test_checkpoint_uploads_write_the_manifest_last(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    store = machine(s3_bucket, tmp_path / "worker")
    order: list[str] = []
    store.client.meta.events.register(
        "before-parameter-build.s3.PutObject", lambda params, **_: order.append(params["Key"]))
    folder = checkpoint(store.work_dir("jobs/j1"), 10)
    store.put_checkpoint(folder, "jobs/j1/checkpoint-10")
    assert [name.rsplit("/", 1)[1] for name in order] == [
        "model.safetensors", "optimizer.pt", "trainer_state.json", MANIFEST]


def test_a_resuming_machine_gets_the_newest_whole_checkpoint(tmp_path: Path,
                                                             s3_bucket: S3Bucket) -> None:
    first = machine(s3_bucket, tmp_path / "worker-a")
    run = first.work_dir("jobs/j1")
    for step in (10, 20):
        first.put_checkpoint(checkpoint(run, step), f"jobs/j1/checkpoint-{step}")
    # Killed mid-upload: step 30's files are there, its manifest never made it.
    first.put_checkpoint(checkpoint(run, 30, whole=False), "jobs/j1/checkpoint-30")
    # A search trial's run folder, one level down.
    trial = run / "trial-0"
    first.put_checkpoint(checkpoint(trial, 5), "jobs/j1/trial-0/checkpoint-5")

    second = machine(s3_bucket, tmp_path / "worker-b")  # an empty disk
    second.fetch_checkpoints("jobs/j1")
    here = second.work_dir("jobs/j1")
    assert latest_complete_checkpoint(here) == here / "checkpoint-20"
    assert files_of(here / "checkpoint-20") == files_of(run / "checkpoint-20")
    # Earlier checkpoints: weights (one may become the version), no resume state.
    assert sorted(files_of(here / "checkpoint-10")) == sorted(
        [MANIFEST, "model.safetensors", "trainer_state.json"])
    assert not is_complete(here / "checkpoint-10")
    assert not (here / "checkpoint-30").exists()
    assert latest_complete_checkpoint(here / "trial-0") == here / "trial-0" / "checkpoint-5"
    assert not [p for p in here.rglob(".*")]

    # Fetching again finds everything here: nothing is downloaded twice.
    gets: list[str] = []
    second.client.meta.events.register("before-parameter-build.s3.GetObject",
                                       lambda params, **_: gets.append(params["Key"]))
    second.fetch_checkpoints("jobs/j1")
    assert gets == []


def test_a_torn_local_checkpoint_is_replaced_by_the_whole_one(tmp_path: Path,
                                                              s3_bucket: S3Bucket) -> None:
    first = machine(s3_bucket, tmp_path / "worker-a")
    first.put_checkpoint(checkpoint(first.work_dir("jobs/j1"), 10), "jobs/j1/checkpoint-10")
    second = machine(s3_bucket, tmp_path / "worker-b")
    torn = checkpoint(second.work_dir("jobs/j1"), 10, whole=False)
    (torn / "model.safetensors").write_bytes(b"half")
    second.fetch_checkpoints("jobs/j1")
    assert is_complete(torn)
    assert (torn / "model.safetensors").read_bytes() == b"weights at 10"


def test_a_finished_job_drops_its_resume_state_from_the_bucket(tmp_path: Path,
                                                               s3_bucket: S3Bucket) -> None:
    store = machine(s3_bucket, tmp_path / "worker")
    run = store.work_dir("jobs/j1")
    store.put_checkpoint(checkpoint(run, 10), "jobs/j1/checkpoint-10")
    store.put_checkpoint(checkpoint(run / "trial-1", 4), "jobs/j1/trial-1/checkpoint-4")
    (tmp_path / "f").write_text("x")
    store.put_file(tmp_path / "f", "jobs/j1x/optimizer.pt")  # another key's: stays
    store.drop_resume_state("jobs/j1")
    kept = [f"jobs/j1/{folder}/{name}" for folder in ("checkpoint-10", "trial-1/checkpoint-4")
            for name in ("model.safetensors", MANIFEST, "trainer_state.json")]
    assert sorted(s3_bucket.objects()) == sorted([*kept, "jobs/j1x/optimizer.pt"])
    assert (run / "checkpoint-10" / "optimizer.pt").is_file()  # the work folder is the caller's
