"""The local artifact store: keys stay inside the root; trees appear whole or not at all. And
the parts of the bucket store that need no server: its URLs, keys and checkpoint order."""

import os
import re
from pathlib import Path

import pytest

from app.ml.checkpoints import (
    MANIFEST,
    is_complete,
    upload_order,
    whole_remote_checkpoints,
    write_manifest,
)
from app.storage.artifacts import LocalArtifactStore, artifact_store
from app.storage.s3 import check_key, parse_url


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    made = artifact_store(tmp_path / "artifacts")
    assert isinstance(made, LocalArtifactStore)
    return made


def test_artifact_store_creates_its_root(tmp_path: Path) -> None:
    artifact_store(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()


def test_new_keys_are_unique_and_kind_prefixed(store: LocalArtifactStore) -> None:
    keys = {store.new_key("files") for _ in range(100)}
    assert len(keys) == 100
    assert all(re.fullmatch(r"files/[0-9a-f]{32}", key) for key in keys)


def test_local_path_inside_root(store: LocalArtifactStore) -> None:
    assert store.local_path("files/abc") == store.root / "files" / "abc"
    assert store.local_path("tmp") == store.root / "tmp"
    # ".." that stays inside the root is harmless.
    assert store.local_path("files/../models/x") == store.root / "models" / "x"


@pytest.mark.parametrize("key", ["..", "../x", "files/../../x", "/etc/passwd",
                                 "files/../../artifacts-other/x"])
def test_local_path_refuses_keys_escaping_the_root(store: LocalArtifactStore, key: str) -> None:
    with pytest.raises(ValueError, match="escapes"):
        store.local_path(key)


def test_local_path_refuses_symlink_out_of_root(store: LocalArtifactStore,
                                                tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, store.root / "link")
    with pytest.raises(ValueError):
        store.local_path("link/secret")


def test_put_file_moves_into_place(store: LocalArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "upload.tmp"
    source.write_bytes(b"payload")
    key = store.new_key("files")
    store.put_file(source, key)
    assert not source.exists()
    assert store.local_path(key).read_bytes() == b"payload"


def make_tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(b"weights")
    (root / "sub" / "config.json").write_text("{}")
    return root


def test_put_tree_copies_whole_tree(store: LocalArtifactStore, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "ckpt")
    key = store.new_key("models")
    store.put_tree(source, key)
    target = store.local_path(key)
    assert (target / "model.safetensors").read_bytes() == b"weights"
    assert (target / "sub" / "config.json").read_text() == "{}"
    assert source.is_dir()  # a copy: the job's checkpoint stays
    assert not list(target.parent.glob("*.partial"))


def test_put_tree_replaces_a_stale_partial_copy(store: LocalArtifactStore,
                                                tmp_path: Path) -> None:
    key = store.new_key("models")
    stale = store.local_path(key).with_name(store.local_path(key).name + ".partial")
    stale.mkdir(parents=True)
    (stale / "junk").write_text("left by a crash")
    store.put_tree(make_tree(tmp_path / "ckpt"), key)
    target = store.local_path(key)
    assert sorted(p.name for p in target.iterdir()) == ["model.safetensors", "sub"]
    assert not stale.exists()


def test_put_tree_failure_leaves_no_target(store: LocalArtifactStore, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "ckpt")
    # A dangling link cannot be copied: copytree fails after copying the rest.
    os.symlink(tmp_path / "missing", source / "broken")
    key = store.new_key("models")
    with pytest.raises(OSError):
        store.put_tree(source, key)
    assert not store.local_path(key).exists()


def test_delete_file_tree_and_missing(store: LocalArtifactStore, tmp_path: Path) -> None:
    file_key, tree_key = store.new_key("files"), store.new_key("models")
    (tmp_path / "f").write_text("x")
    store.put_file(tmp_path / "f", file_key)
    store.put_tree(make_tree(tmp_path / "ckpt"), tree_key)
    store.delete(file_key)
    store.delete(tree_key)
    assert not store.local_path(file_key).exists()
    assert not store.local_path(tree_key).exists()
    store.delete(store.new_key("files"))  # nothing there: no error


def test_local_store_serves_and_streams_in_place(store: LocalArtifactStore,
                                                 tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * (3 * 1024 * 1024 + 5))
    key = store.new_key("files")
    store.put_file(tmp_path / "f", key)
    assert store.cached_path(key) == store.local_path(key) == store.work_dir(key)
    chunks = list(store.chunks(key))
    assert [len(c) for c in chunks] == [1024 * 1024] * 3 + [5]


def test_local_store_checkpoints_are_already_in_place(store: LocalArtifactStore,
                                                      tmp_path: Path) -> None:
    run = store.work_dir("jobs/j1")
    folder = make_tree(run / "checkpoint-5")
    write_manifest(folder)
    before = sorted(p.name for p in run.iterdir())
    store.put_checkpoint(folder, "jobs/j1/checkpoint-5")  # written there: nothing to do
    store.fetch_checkpoints("jobs/j1")
    assert sorted(p.name for p in run.iterdir()) == before
    assert is_complete(store.local_path("jobs/j1/checkpoint-5"))
    # Written elsewhere: copied in whole.
    store.put_checkpoint(make_tree(tmp_path / "elsewhere"), "jobs/j1/checkpoint-6")
    assert (run / "checkpoint-6" / "model.safetensors").read_bytes() == b"weights"


def test_upload_order_puts_the_manifest_last(tmp_path: Path) -> None:
    folder = make_tree(tmp_path / "checkpoint-3")
    (folder / "z.json").write_text("{}")
    write_manifest(folder)
    order = [p.relative_to(folder).as_posix() for p in upload_order(folder)]
    assert order == ["model.safetensors", "sub/config.json", "z.json", MANIFEST]
    (folder / MANIFEST).unlink()
    assert MANIFEST not in [p.name for p in upload_order(folder)]


def test_whole_remote_checkpoints_are_those_with_a_manifest() -> None:
    names = ["checkpoint-10/model.safetensors", f"checkpoint-10/{MANIFEST}",
             f"checkpoint-20/{MANIFEST}", "checkpoint-30/model.safetensors",
             f"trial-1/checkpoint-4/{MANIFEST}", f"notes/{MANIFEST}", MANIFEST,
             f"checkpoint-x/{MANIFEST}"]
    assert whole_remote_checkpoints(names) == {
        "": [(20, "checkpoint-20"), (10, "checkpoint-10")],
        "trial-1": [(4, "trial-1/checkpoint-4")]}


@pytest.mark.parametrize("url,expected", [("s3://bucket", ("bucket", "")),
                                          ("s3://my.bucket-1/a/b/", ("my.bucket-1", "a/b"))])
def test_s3_urls_name_a_bucket_and_a_prefix(url: str, expected: tuple[str, str]) -> None:
    assert parse_url(url) == expected


@pytest.mark.parametrize("key", ["..", "a/../b", "/abs", "a//b", ".hidden", "a/b c", ""])
def test_s3_keys_must_be_plain_relative_names(key: str) -> None:
    with pytest.raises(ValueError, match="escapes"):
        check_key(key)
    assert check_key("jobs/j1/trial-0/checkpoint-5/tuneforge-manifest.json")
