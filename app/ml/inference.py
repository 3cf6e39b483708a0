"""Serving: loaded model versions (in the precision they serve in), each with its batch
runner, in an in-process cache bounded by memory.

LoRA versions over one base share that base's weights: each has its own module tree (its
adapters and head), whose base parameters are the very tensors of one `SharedBase`. So each
version's runner runs its forward passes independently, with nothing to switch between
versions and no lock, and the base is in memory once, counted once in the cache's budget.
"""

import logging
import threading
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from app.ml.lora import add_adapter, base_with_head
from app.ml.precision import native_bf16
from app.ml.serving import BatchLimits, BatchRunner, ServingObserver
from app.ml.tasks.base import TaskAdapter

log = logging.getLogger(__name__)
Precision = Literal["fp32", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "int8")


def serving_precision(requested: str) -> Precision:
    """The precision a model serves in. `auto`: bf16 where the hardware computes it natively
    (top-1 agreement with fp32 on SST-2 dev measured at >= 99.5%, see bench/serve.py), else
    fp32. int8 (dynamic quantization of the linear layers) runs on CPU only; asked for on a
    GPU, bf16 or fp32 serves instead."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {requested!r}")
    if requested == "int8" and torch.cuda.is_available():
        requested = "auto"
    if requested == "auto":
        return "bf16" if native_bf16() else "fp32"
    return cast(Precision, requested)


class SharedBase:
    """One base model's weights in one precision, shared by reference by the adapter versions
    over it. The first version's encoder parameters become the shared ones; later versions'
    encoders are pointed at them (their own copies, just loaded, are then freed)."""

    def __init__(self, source: str, precision: Precision):
        self.source = source
        self.precision = precision
        self.parameters: dict[str, torch.nn.Parameter] = {}
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return sum(p.numel() * p.element_size() for p in self.parameters.values())

    def data_pointers(self) -> set[int]:
        with self._lock:
            return {p.data_ptr() for p in self.parameters.values()}

    def adopt(self, encoder: torch.nn.Module) -> None:
        with self._lock:
            for name, own in list(encoder.named_parameters()):
                own.requires_grad_(False)
                shared = self.parameters.setdefault(name, own)
                if shared is not own and shared.shape == own.shape and shared.dtype == own.dtype:
                    owner, _, leaf = name.rpartition(".")
                    setattr(encoder.get_submodule(owner), leaf, shared)


@dataclass(eq=False)
class LoadedModel:
    task: TaskAdapter
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    max_length: int
    precision: Precision = "fp32"
    # Started by the cache; a model used directly (tests, benchmarks) needs none.
    runner: BatchRunner | None = field(default=None, repr=False)
    # An adapter version: the base weights it shares with other versions of that base.
    base: SharedBase | None = field(default=None, repr=False)

    def predict(self, inputs: list[str], parameters: dict[str, Any]) -> list[Any]:
        return self.task.predict(self.model, self.tokenizer, inputs, parameters, self.max_length)

    def count_tokens(self, inputs: list[str]) -> list[int]:
        """Each input's length in tokens, as the model will see it (for batch budgets)."""
        encoded = self.tokenizer(inputs, truncation=True, max_length=self.max_length,
                                 verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    @property
    def size_bytes(self) -> int:
        """The weights this version holds alone (for an adapter: not its shared base)."""
        return model_bytes(self.model, self.base.data_pointers() if self.base else set())

    def start_runner(self, name: str, limits: BatchLimits,
                     observer: ServingObserver | None = None) -> BatchRunner:
        self.runner = BatchRunner(name, self.predict, self.count_tokens, limits,
                                  set_threads=torch.set_num_threads, observer=observer)
        return self.runner

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()


def model_bytes(model: torch.nn.Module, shared: set[int] | None = None) -> int:
    """Memory the weights take: every tensor of the state dict, including quantized linear
    layers' packed weights, which are not parameters; tensors at `shared` data pointers
    (a base shared with other versions) left out."""
    total = 0
    for value in model.state_dict().values():
        for tensor in value if isinstance(value, tuple) else (value,):
            if isinstance(tensor, torch.Tensor) and tensor.data_ptr() not in (shared or ()):
                total += tensor.numel() * tensor.element_size()
    return total


def load_model(task: TaskAdapter, directory: Path, max_length: int,
               precision: Precision = "fp32", base: SharedBase | None = None) -> LoadedModel:
    """A version ready to serve; with `base`, a LoRA version over that shared base."""
    if base is not None:
        return _load_adapter_version(task, directory, max_length, base)
    model = _ready(task.load_model(directory), precision)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return LoadedModel(task, model, tokenizer, max_length, precision)


def _ready(model: PreTrainedModel, precision: Precision) -> PreTrainedModel:
    model.eval()
    if torch.cuda.is_available():
        cast(Any, model).to("cuda")  # transformers types .to() oddly
    return _in_precision(model, precision)


def _load_adapter_version(task: TaskAdapter, directory: Path, max_length: int,
                          base: SharedBase) -> LoadedModel:
    model = _ready(base_with_head(task, base.source, directory), base.precision)
    base.adopt(model.base_model)
    model = add_adapter(model, directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return LoadedModel(task, model, tokenizer, max_length, base.precision, base=base)


def _in_precision(model: PreTrainedModel, precision: Precision) -> PreTrainedModel:
    if precision == "bf16":
        return cast(PreTrainedModel, cast(Any, model).to(torch.bfloat16))
    if precision == "int8":
        with warnings.catch_warnings():
            # torch.ao's eager quantization warns it will move to torchao; it works as is.
            warnings.simplefilter("ignore")
            quantized = torch.ao.quantization.quantize_dynamic(
                model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
        return cast(PreTrainedModel, quantized)
    return model


class ModelCache:
    """Least-recently-used cache of loaded versions, bounded by the bytes their weights take
    (`budget_bytes`) and, optionally, by a count (`max_models`). The most recently loaded
    model always stays, even alone over budget. Versions are immutable, so never stale.

    A cold model loads in the thread that asked for it, outside the cache's lock: requests to
    hot models go on meanwhile."""

    def __init__(self, budget_bytes: int, max_models: int | None = None,
                 precision: str = "auto", limits: BatchLimits | None = None,
                 observer: ServingObserver | None = None):
        self.budget_bytes = budget_bytes
        self.max_models = max_models
        self.precision = serving_precision(precision)
        self.limits = limits or BatchLimits()
        self.observer = observer or ServingObserver()
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        # Bases shared by loaded adapter versions; one goes once no loaded version holds it.
        self._bases: weakref.WeakValueDictionary[tuple[str, str], SharedBase] = \
            weakref.WeakValueDictionary()

    @property
    def loaded_bytes(self) -> int:
        with self._lock:
            return self._held_bytes()

    def _held_bytes(self) -> int:
        """Each version's own weights, and each base its adapter versions share, once."""
        bases = {id(m.base): m.base for m in self._models.values() if m.base is not None}
        return sum(self._sizes.values()) + sum(base.size_bytes for base in bases.values())

    def shared_base(self, source: str) -> SharedBase:
        """The base adapter versions over `source` share (int8 layers take no adapters:
        such versions serve in fp32)."""
        precision: Precision = "fp32" if self.precision == "int8" else self.precision
        with self._lock:
            base = self._bases.get((source, precision))
            if base is None:
                base = self._bases[(source, precision)] = SharedBase(source, precision)
            return base

    def keys(self) -> list[str]:
        """Loaded versions, least recently used first."""
        with self._lock:
            return list(self._models)

    def peek(self, key: str) -> LoadedModel | None:
        """The loaded model for `key`, if hot (never loads: safe on an event loop)."""
        with self._lock:
            loaded = self._models.get(key)
            if loaded is not None:
                self._models.move_to_end(key)
                self.observer.cache_hit()
            return loaded

    def get(self, key: str, task: TaskAdapter, directory: Path, max_length: int,
            base_source: str | None = None) -> LoadedModel:
        """The loaded version `key`; `base_source`: a LoRA version over that base model."""
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                self.observer.cache_hit()
                return self._models[key]
            loading = self._loading.setdefault(key, threading.Lock())
        # One thread loads a given version; others asking for it wait rather than load twice.
        with loading:
            with self._lock:
                if key in self._models:
                    self._loading.pop(key, None)
                    self.observer.cache_hit()
                    return self._models[key]
            base = self.shared_base(base_source) if base_source else None
            loaded = load_model(task, directory, max_length, self.precision, base)
            loaded.start_runner(key, self.limits, self.observer)
            self.observer.model_loaded()
            with self._lock:
                self._models[key] = loaded
                self._sizes[key] = loaded.size_bytes
                self._loading.pop(key, None)
                evicted = self._over_budget()
                self.observer.cache_holds(self._held_bytes())
            for old in evicted:
                self.observer.model_evicted()
                old.close()
            return loaded

    def _over_budget(self) -> list[LoadedModel]:
        """Pop least recently used models until within budget (the newest always stays)."""
        evicted = []
        while len(self._models) > 1 and (
                self._held_bytes() > self.budget_bytes
                or (self.max_models is not None and len(self._models) > self.max_models)):
            key, old = self._models.popitem(last=False)
            del self._sizes[key]
            log.info("unloaded model %s to stay within the serving memory budget", key)
            evicted.append(old)
        return evicted

    def close(self) -> None:
        """Stop every runner (each serves what it has queued first)."""
        with self._lock:
            loaded, self._models = list(self._models.values()), OrderedDict()
            self._sizes.clear()
            self.observer.cache_holds(0)
        for model in loaded:
            model.close()

    def evict(self, key: str) -> None:
        with self._lock:
            loaded = self._models.pop(key, None)
            self._sizes.pop(key, None)
            self.observer.cache_holds(self._held_bytes())
        if loaded is not None:
            loaded.close()
