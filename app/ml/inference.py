"""Serving: an in-process cache of loaded model versions, and batched prediction."""

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from app.ml.tasks.base import TaskAdapter


@dataclass
class LoadedModel:
    task: TaskAdapter
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    max_length: int

    def predict(self, inputs: list[str], parameters: dict[str, Any]) -> list[Any]:
        return self.task.predict(self.model, self.tokenizer, inputs, parameters, self.max_length)


def load_model(task: TaskAdapter, directory: Path, max_length: int) -> LoadedModel:
    model = task.load_model(directory)
    model.eval()
    if torch.cuda.is_available():
        cast(Any, model).to("cuda")  # transformers types .to() oddly
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return LoadedModel(task, model, tokenizer, max_length)


class ModelCache:
    """Least-recently-used cache of loaded versions; versions are immutable, so never stale."""

    def __init__(self, capacity: int):
        self.capacity = max(1, capacity)
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, key: str, task: TaskAdapter, directory: Path, max_length: int) -> LoadedModel:
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            loading = self._loading.setdefault(key, threading.Lock())
        # One thread loads a given version; others asking for it wait rather than load twice.
        with loading:
            with self._lock:
                if key in self._models:
                    self._loading.pop(key, None)
                    return self._models[key]
            loaded = load_model(task, directory, max_length)
            with self._lock:
                self._models[key] = loaded
                self._loading.pop(key, None)
                while len(self._models) > self.capacity:
                    self._models.popitem(last=False)
            return loaded

    def evict(self, key: str) -> None:
        with self._lock:
            self._models.pop(key, None)
