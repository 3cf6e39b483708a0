"""Checkpoint completeness: a manifest written last marks a checkpoint as whole.

Trainer writes a checkpoint's files one by one; a worker killed halfway leaves a torn
folder. Resuming only from folders whose manifest matches their files means a torn
checkpoint is skipped and the one before it is used.
"""

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

MANIFEST = "tuneforge-manifest.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path) -> None:
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST}
    staging = directory / (MANIFEST + ".partial")
    staging.write_text(json.dumps({"files": files}, indent=1))
    # fsync, then rename: the manifest appears whole or not at all.
    with staging.open("rb") as handle:
        os.fsync(handle.fileno())
    staging.rename(directory / MANIFEST)


def is_complete(directory: Path, verify_hashes: bool = True) -> bool:
    try:
        files = json.loads((directory / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return False
    for name, expected in files.items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != expected["bytes"]:
            return False
        if verify_hashes and _sha256(path) != expected["sha256"]:
            return False
    return True


def checkpoint_step(directory: Path) -> int | None:
    match = _CHECKPOINT.match(directory.name)
    return int(match.group(1)) if match else None


def latest_complete_checkpoint(output_dir: Path) -> Path | None:
    """The highest-step checkpoint whose manifest checks out, or None."""
    if not output_dir.is_dir():
        return None
    candidates = [(step, path) for path in output_dir.iterdir()
                  if path.is_dir() and (step := checkpoint_step(path)) is not None]
    for _, path in sorted(candidates, reverse=True):
        if is_complete(path):
            return path
    return None


def upload_order(directory: Path) -> list[Path]:
    """A checkpoint's files in the order a copy elsewhere must be written: the manifest last,
    so a reader of the copy that finds the manifest finds every file it names."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = directory / MANIFEST
    return files + ([manifest] if manifest.is_file() else [])


def whole_remote_checkpoints(names: Iterable[str]) -> dict[str, list[tuple[int, str]]]:
    """Checkpoints among the object names of a copied run folder, by the folder that holds
    them (`""` for the run itself, `trial-3` for a search trial): (step, folder), newest
    first. A checkpoint is whole when its manifest is there, since the manifest goes last."""
    found: dict[str, list[tuple[int, str]]] = {}
    for name in names:
        folder, _, leaf = name.rpartition("/")
        if leaf != MANIFEST or not folder:
            continue
        run, _, checkpoint = folder.rpartition("/")
        step = checkpoint_step(Path(checkpoint))
        if step is not None:
            found.setdefault(run, []).append((step, folder))
    return {run: sorted(entries, reverse=True) for run, entries in found.items()}
