"""A fine-tuned version as a download: a gzipped tar that `from_pretrained` loads once unpacked.

The archive holds one folder, named after the version (`ft-sentiment-v3/`): the weights
(safetensors only), config.json, the tokenizer's files, `labels.json` and a model card
(README.md) with the version's metrics and lineage. It is written while it is sent, a
chunk at a time, so a large model never sits in memory whole. Files are opened before
the first byte goes out: a version deleted while it downloads still downloads whole.
"""

import json
import os
import re
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import ModelVersion
from app.errors import Conflict, InvalidRequest
from app.ml.base_models import local_base_models
from app.ml.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    adapter_settings,
    base_with_head,
    merged,
)
from app.ml.tasks.catalog import get_task
from app.services import registry
from app.storage.artifacts import ArtifactStore

MEDIA_TYPE = "application/gzip"
CHUNK_BYTES = 1024 * 1024
# Weights compress by under 10%: the fastest level keeps the download cheap for the API.
GZIP_LEVEL = 1
_BLOCK = tarfile.BLOCKSIZE
# What of a version's folder is exported: never the training state (optimizer, RNG,
# trainer_state.json) and never a pickle, whatever else the folder may hold.
MODEL_FILES = ("config.json", "generation_config.json", "*.safetensors",
               "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt",
                   "spiece.model", "sentencepiece.bpe.model", "chat_template.jinja")
# The transformers class that loads each task's weights, and its pipeline (the card says).
AUTO_CLASSES = {
    "text-classification": ("AutoModelForSequenceClassification", "text-classification"),
    "multi-label-classification": ("AutoModelForSequenceClassification",
                                   "text-classification"),
    "token-classification": ("AutoModelForTokenClassification", "token-classification"),
    "masked-lm": ("AutoModelForMaskedLM", "fill-mask"),
    "causal-lm": ("AutoModelForCausalLM", "text-generation"),
}


@dataclass(frozen=True)
class Member:
    """One file of the archive: its name inside the folder, its size and its bytes."""

    name: str
    size: int
    chunks: Callable[[], Iterator[bytes]]

    @classmethod
    def of_text(cls, name: str, text: str) -> "Member":
        data = text.encode()
        return cls(name, len(data), lambda: iter((data,)))

    @classmethod
    def of_open_file(cls, name: str, handle: IO[bytes]) -> "Member":
        size = os.fstat(handle.fileno()).st_size
        return cls(name, size, lambda: iter(lambda: handle.read(CHUNK_BYTES), b""))


@dataclass(frozen=True)
class Export:
    """An archive ready to stream: `chunks()` yields it and closes its files at the end."""

    filename: str
    folder: str
    members: list[Member]
    files: ExitStack
    mtime: int = 0

    def chunks(self) -> Iterator[bytes]:
        with self.files:
            yield from tar_gz(self.folder, self.members, self.mtime)


def archive_name(version_id: str) -> str:
    """`ft:sentiment:v3` -> `ft-sentiment-v3`: a name that is safe as a file or folder."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", version_id).strip("-.") or "model"


def export_version(session: Session, settings: Settings, store: ArtifactStore,
                   project_id: str, ref: str, format: str = "merged") -> Export:
    """The archive of a project's version named by id, `name` or `name@alias`. A LoRA version
    exports merged into its base (`format="merged"`: a plain transformers model) or as its
    adapter alone (`format="adapter"`: for peft, over the base model)."""
    version = registry.find_version(session, project_id, ref)
    if version is None and ref in local_base_models(settings.resolved_models_dir):
        raise Conflict("Base models are shared and not exported; export a fine-tuned "
                       "version (ft:name:vN, name or name@alias).", param="model",
                       code="base_model_not_exportable")
    if version is None:
        version = registry.resolve_version(session, project_id, ref)  # 404, or 409 training
    parent = registry.find_version(session, project_id, version.base_model)
    files = ExitStack()
    members = weights(session, settings, store, version, files, format)
    card = model_card(version, parent) + (adapter_note(version) if format == "adapter" else "")
    members += [Member.of_text("labels.json", label_map(version.labels)),
                Member.of_text("README.md", card)]
    name = archive_name(version.id)
    return Export(f"{name}.tar.gz", name, members, files, int(version.created_at))


def weights(session: Session, settings: Settings, store: ArtifactStore,
            version: ModelVersion, files: ExitStack, format: str) -> list[Member]:
    """The model files of the archive, each opened now."""
    folder = store.local_path(version.storage_key)
    if not registry.is_adapter_version(version):
        if format == "adapter":
            raise InvalidRequest(f"'{version.id}' is a full fine-tune, not a LoRA adapter; "
                                 "export it with format=merged.", param="format",
                                 code="not_an_adapter")
        return version_files(folder, files)
    if format == "adapter":
        return adapter_files(folder, version, files)
    base = registry.adapter_base_source(session, settings, store, version)
    return merged_files(folder, base, version, files)


def adapter_files(folder: Path, version: ModelVersion, files: ExitStack) -> list[Member]:
    """The adapter, its head and the version's config and tokenizer, the adapter's config
    naming the base by its id here rather than by this server's path of it."""
    settings = {**adapter_settings(folder), "base_model_name_or_path": version.base_model}
    return [Member.of_text(ADAPTER_CONFIG, json.dumps(settings, indent=2)),
            *version_files(folder, files)]


def merged_files(folder: Path, base: str, version: ModelVersion,
                 files: ExitStack) -> list[Member]:
    """The base with the adapter folded in, written to a scratch folder and opened there
    (open files outlive the folder), with the version's tokenizer."""
    model = merged(base_with_head(get_task(version.task), base, folder), folder)
    with tempfile.TemporaryDirectory(prefix="tuneforge-merge-") as scratch:
        model.save_pretrained(scratch, safe_serialization=True)
        members = version_files(Path(scratch), files)
    return members + [m for m in version_files(folder, files)
                      if m.name not in {member.name for member in members}
                      and m.name not in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)]


def version_files(folder: Path, files: ExitStack) -> list[Member]:
    """The exported files of a version's folder, each opened now."""
    members = []
    for pattern in MODEL_FILES + TOKENIZER_FILES:
        for path in sorted(folder.glob(pattern)):
            if path.is_file() and not path.is_symlink():
                members.append(Member.of_open_file(path.name, files.enter_context(
                    path.open("rb"))))
    return members


def adapter_note(version: ModelVersion) -> str:
    auto_class, _ = AUTO_CLASSES.get(version.task, ("AutoModel", version.task))
    name = archive_name(version.id)
    return "\n".join([
        "", "## LoRA adapter", "",
        f"This folder holds a LoRA adapter and its task head, to be loaded over the base "
        f"model `{version.base_model}` with peft (`?format=merged` downloads the two merged "
        "into one plain model):", "", "```python", "from peft import PeftModel",
        f"from transformers import {auto_class}", "", "labels = "
        f"{json.dumps(version.labels)}",
        f"base = {auto_class}.from_pretrained(\"<{version.base_model}>\", "
        "num_labels=len(labels))",
        f'model = PeftModel.from_pretrained(base, "{name}")', "```", ""])


def label_map(labels: list[str]) -> str:
    return json.dumps({"labels": labels,
                       "id2label": {str(i): label for i, label in enumerate(labels)},
                       "label2id": {label: i for i, label in enumerate(labels)}}, indent=2)


def lineage(version: ModelVersion, parent: ModelVersion | None) -> dict[str, Any]:
    recorded = version.lineage
    return {"version": version.id, "base_model": version.base_model,
            "parent_version": parent.id if parent is not None else None,
            "job": recorded.get("job"), "training_files": recorded.get("files", []),
            "hyperparameters": recorded.get("hyperparameters", {}),
            "seed": recorded.get("seed")}


def model_card(version: ModelVersion, parent: ModelVersion | None) -> str:
    """README.md of the archive: how to load it, its metrics and where it came from."""
    # Values users chose (file names) go in JSON blocks: nothing in them can end a block.
    lines = [*_card_usage(version), *_card_metrics(version.metrics), "", "## Lineage", "",
             "```json", json.dumps(lineage(version, parent), indent=2), "```", "",
             f"Labels: see `labels.json` ({len(version.labels)}).", ""]
    return "\n".join(lines)


def _card_usage(version: ModelVersion) -> list[str]:
    auto_class, pipeline = AUTO_CLASSES.get(version.task, ("AutoModel", version.task))
    folder = archive_name(version.id)
    return ["---", "library_name: transformers", f"pipeline_tag: {pipeline}", "tags:",
            "- tuneforge", f"- {version.task}", "---", "", f"# {version.id}", "",
            f"A {version.task} model fine-tuned with Tuneforge from `{version.base_model}`.",
            "", "```python", f"from transformers import {auto_class}, AutoTokenizer", "",
            f'model = {auto_class}.from_pretrained("{folder}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{folder}")', "```", ""]


def _card_metrics(metrics: dict[str, Any]) -> list[str]:
    scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    tables = {k: v for k, v in metrics.items() if k not in scalars}
    lines = ["## Metrics", "", "On the validation rows, at the checkpoint that became this "
             "version.", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {name} | {value:.4g} |" for name, value in scalars.items()]
    if tables:  # confusion matrix, scores per entity type
        lines += ["", "```json", json.dumps(tables, indent=2), "```"]
    return lines


def tar_gz(folder: str, members: Iterable[Member], mtime: int = 0) -> Iterator[bytes]:
    """A gzipped tar of `members` under `folder/`, yielded as it is written."""
    gzip = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: the gzip container
    for block in tar_blocks(folder, members, mtime):
        compressed = gzip.compress(block)
        if compressed:
            yield compressed
    yield gzip.flush()


def tar_blocks(folder: str, members: Iterable[Member], mtime: int = 0) -> Iterator[bytes]:
    """The tar stream itself: each member's header, its bytes as read, its padding."""
    yield _header(folder, 0, mtime, directory=True)
    for member in members:
        yield _header(f"{folder}/{member.name}", member.size, mtime)
        written = 0
        for chunk in member.chunks():
            written += len(chunk)
            yield chunk
        if written != member.size:  # a file that changed under us: never a corrupt archive
            raise RuntimeError(f"{member.name} changed size while it was exported")
        yield b"\0" * (-member.size % _BLOCK)
    yield b"\0" * (2 * _BLOCK)


def _header(name: str, size: int, mtime: int, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = size, mtime
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    return info.tobuf(tarfile.PAX_FORMAT)
