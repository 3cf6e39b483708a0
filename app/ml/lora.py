"""LoRA for encoders: which layers take low-rank adapters, per architecture and task, and
how a model gets them (training), reads them back (serving) or folds them in (export).

Adapters go on every linear layer inside the transformer blocks (query, key, value, the
attention output, the intermediate and the output dense layers), not on query and value
alone as in the LoRA paper: for small encoders adapting all of them is what comes close to
a full fine-tune at a small rank, and it is still about 1% of MiniLM's weights. The task
head (and, for BERT's sentence classifiers, the pooler it reads from, which sentence
embedding models such as all-MiniLM-L6-v2 never trained) is new for each job, so it trains
in full and is saved with the adapter (peft's `modules_to_save`).

Masked-LM and causal-LM are refused: their result is meant as the base of later jobs, and
an adapter is not a base; train them in full.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from transformers import PreTrainedModel

from app.errors import InvalidRequest
from app.ml.hyperparameters import LoraSettings
from app.ml.tasks.base import TaskAdapter
from app.ml.tasks.multi_label import THRESHOLDS_KEY

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PARAM = "hyperparameters.lora"


@dataclass(frozen=True)
class Architecture:
    """Where adapters go in one architecture, and the head each task trains in full."""

    targets: tuple[str, ...]
    heads: dict[str, tuple[str, ...]]


_BERT_LAYERS = ("query", "key", "value", "attention.output.dense", "intermediate.dense",
                "output.dense")
_SENTENCE_HEAD_WITH_POOLER = ("classifier", "pooler")
_CLASSIFIER = ("classifier",)


def _heads(sentence: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    return {"text-classification": sentence, "multi-label-classification": sentence,
            "token-classification": _CLASSIFIER}


# Keyed by `config.model_type`. RoBERTa's and ELECTRA's sentence heads hold their own dense
# layer (and use no pooler); DistilBERT's has a pre_classifier.
ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(_BERT_LAYERS, _heads(_SENTENCE_HEAD_WITH_POOLER)),
    "roberta": Architecture(_BERT_LAYERS, _heads(_CLASSIFIER)),
    "xlm-roberta": Architecture(_BERT_LAYERS, _heads(_CLASSIFIER)),
    "electra": Architecture(_BERT_LAYERS, _heads(_CLASSIFIER)),
    "distilbert": Architecture(("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"),
                               _heads(("pre_classifier", "classifier"))),
}
# peft's task types, for the tasks LoRA trains.
_TASK_TYPES = {"text-classification": "SEQ_CLS", "multi-label-classification": "SEQ_CLS",
               "token-classification": "TOKEN_CLS"}


def check_task(task: str) -> None:
    """Refuse LoRA for a task it does not train (see the module's docstring)."""
    if task not in _TASK_TYPES:
        supported = ", ".join(sorted(_TASK_TYPES))
        raise InvalidRequest(f"LoRA trains {supported}; a {task} job trains every weight "
                             "(its result is meant as a base for later jobs): leave out "
                             "lora.", param=PARAM, code="lora_unsupported")


def architecture(model_type: str) -> Architecture:
    if model_type not in ARCHITECTURES:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise InvalidRequest(f"LoRA is not set up for the {model_type!r} architecture "
                             f"(supported: {supported}); leave out lora to fine-tune it in full.",
                             param=PARAM, code="lora_unsupported")
    return ARCHITECTURES[model_type]


def check_base(task: str, base_model: str) -> None:
    """Refuse, before any training process starts, a task or base architecture LoRA is not
    set up for (across processes, an error inside a rank would only read as a failure)."""
    from transformers import PreTrainedConfig

    check_task(task)
    # The raw config: an architecture transformers itself does not know is refused here too.
    config, _ = PreTrainedConfig.get_config_dict(base_model)
    architecture(str(config.get("model_type")))


def lora_config(model: torch.nn.Module, settings: LoraSettings, task: str) -> Any:
    from peft import LoraConfig

    check_task(task)
    layout = architecture(cast(Any, model).config.model_type)
    return LoraConfig(task_type=_TASK_TYPES[task], r=settings.r, lora_alpha=settings.alpha,
                      lora_dropout=settings.dropout, target_modules=list(layout.targets),
                      modules_to_save=list(layout.heads[task]))


def with_adapters(model: torch.nn.Module, settings: LoraSettings, task: str) -> torch.nn.Module:
    """The model for training: frozen base weights, fresh adapters, the task head trainable."""
    from peft import get_peft_model

    peft_model = get_peft_model(cast(PreTrainedModel, model), lora_config(model, settings, task))
    return cast(torch.nn.Module, peft_model)


def is_adapter_model(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def is_adapter(directory: Path) -> bool:
    """Whether a checkpoint or version folder holds an adapter rather than a whole model."""
    return (directory / ADAPTER_CONFIG).is_file()


def finish_checkpoint(model: Any, directory: Path) -> None:
    """Complete an adapter checkpoint: peft saves the adapter alone, so add the task model's
    config (its label map and what serving reads from it), and drop the model card peft
    writes, which names the server's own path of the base model."""
    model.get_base_model().config.save_pretrained(directory)
    (directory / "README.md").unlink(missing_ok=True)


def adapter_settings(directory: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((directory / ADAPTER_CONFIG).read_text())
    return config


def base_with_head(task: TaskAdapter, base_source: str, directory: Path) -> PreTrainedModel:
    """The base model with a head for an adapter version's labels, its config completed with
    what the version's config adds to the base's (multi-label thresholds): what the adapter
    and its saved head are then read into."""
    saved = json.loads((directory / "config.json").read_text())
    id2label = saved.get("id2label") or {}
    model = task.load_model(base_source, [id2label[str(i)] for i in range(len(id2label))] or None)
    for key in saved.keys() - vars(model.config).keys():
        setattr(model.config, key, saved[key])
    # The adapter's own serving settings win over any its base carries (a multi-label base
    # version has thresholds tuned for its own head, not this one).
    if THRESHOLDS_KEY in saved:
        setattr(model.config, THRESHOLDS_KEY, saved[THRESHOLDS_KEY])
    return model


def _with_version_adapter(model: PreTrainedModel, directory: Path) -> Any:
    from peft import PeftModel

    if not (directory / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(f"{ADAPTER_WEIGHTS} is missing: adapters load from "
                                "safetensors only")
    return PeftModel.from_pretrained(model, str(directory), is_trainable=False)


def add_adapter(model: PreTrainedModel, directory: Path) -> PreTrainedModel:
    """`model` (the base, with a head for the version's labels) with the version's adapter and
    head read in. Returns the transformers model, the adapters inside it."""
    return cast(PreTrainedModel, _with_version_adapter(model, directory).get_base_model())


def merged(model: PreTrainedModel, directory: Path) -> PreTrainedModel:
    """The base with the adapter folded into its weights: a plain transformers model."""
    return cast(PreTrainedModel, _with_version_adapter(model, directory).merge_and_unload())
