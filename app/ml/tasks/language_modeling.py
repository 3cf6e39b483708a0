"""Continued pretraining on a team's unlabelled text: masked-LM (BERT-style encoders) and
causal-LM (decoders). The result is a version like any other: it serves fill-mask or text
generation, and is a base model for a later classification or NER job (domain adaptation).

- Rows are `{"text": str}`; a file of them is detected as masked-lm, and a job may ask for
  causal-lm instead.
- Long texts are cut into consecutive blocks of `max_length` tokens rather than truncated,
  so no text is lost.
- Masking (15% of tokens, BERT's 80/10/10 rule) is drawn by the collator from torch's RNG,
  which checkpoints save and restore, so a resumed job masks exactly as an unbroken one.
- Evaluation reports loss and perplexity only: logits over the whole vocabulary for every
  token would not fit in memory. The best checkpoint is the one with the lowest loss.
"""

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    DataCollatorForLanguageModeling,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.auto_factory import _BaseAutoModelClass

from app.errors import DatasetInvalid, InvalidRequest
from app.ml.tasks.base import (
    Features,
    Row,
    TaskAdapter,
    length_sorted_batches,
    load_pretrained,
)

MASK_PROBABILITY = 0.15
DEFAULT_TOP_K = 5
DEFAULT_NEW_TOKENS = 20
PREDICT_BATCH = 32


class LanguageModeling(TaskAdapter):
    """What masked-LM and causal-LM share: plain-text rows, blocks of tokens, loss only."""

    best_metric = "loss"
    greater_is_better = False
    evaluates_loss_only = True
    masked: bool
    auto_class: type[_BaseAutoModelClass]

    def matches(self, row: Row) -> bool:
        return set(row) == {"text"}

    def accepts_rows_of(self, detected_task: str) -> bool:
        return detected_task in LANGUAGE_MODELING_TASKS

    def validate_row(self, row: Row, line: int) -> Row:
        text = row.get("text")
        if not isinstance(text, str):
            raise DatasetInvalid(f"must be a string, not {type(text).__name__}", line=line,
                                 field="text")
        if not text.strip():
            raise DatasetInvalid("is empty", line=line, field="text")
        return {"text": text}

    def validate_dataset(self, rows: Sequence[Row], lines: Sequence[int]) -> None:
        pass  # every non-empty text is usable

    def label_counts(self, rows: Sequence[Row]) -> dict[str, int]:
        return {}

    def labels(self, rows: Sequence[Row]) -> list[str]:
        return []

    def encode(self, rows: Sequence[Row], tokenizer: PreTrainedTokenizerBase,
               label2id: dict[str, int], max_length: int) -> list[Features]:
        if not rows:
            return []
        # Overflowing tokens come back as further blocks, each with its own special tokens.
        encoded = tokenizer([row["text"] for row in rows], truncation=True,
                            max_length=max_length, return_overflowing_tokens=True)
        return [{"input_ids": ids, "attention_mask": [1] * len(ids)}
                for ids in encoded["input_ids"]]

    def collator(self, tokenizer: PreTrainedTokenizerBase) -> Any:
        if tokenizer.pad_token is None:  # decoders such as GPT-2 ship without one
            tokenizer.pad_token = tokenizer.eos_token
        return DataCollatorForLanguageModeling(tokenizer, mlm=self.masked,
                                               mlm_probability=MASK_PROBABILITY)

    def load_model(self, path: str | Path, labels: list[str] | None = None) -> PreTrainedModel:
        return load_pretrained(self.auto_class, path)  # no labels: the head is the vocabulary

    def compute_metrics(self, logits: Any, label_ids: Any, labels: list[str],
                        rows: Sequence[int] | None = None) -> dict[str, float]:
        raise NotImplementedError("language modelling is evaluated by its loss alone")

    def report(self, metrics: dict[str, float]) -> dict[str, float]:
        if "loss" not in metrics:
            return metrics
        # exp of a loss past ~700 overflows; such a model is untrained anyway.
        return {**metrics, "perplexity": math.exp(min(metrics["loss"], 700.0))}

    def response(self, outputs: list[Any], batched: bool) -> Any:
        # The HF API answers a single string with one flat list (candidates, generations).
        return outputs if batched else outputs[0]


class MaskedLanguageModeling(LanguageModeling):
    name = "masked-lm"
    masked = True
    auto_class = AutoModelForMaskedLM

    @torch.inference_mode()
    def predict(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                inputs: list[str], parameters: dict[str, Any], max_length: int) -> list[Any]:
        """Hugging Face fill-mask: the top candidates for the one mask token of each input."""
        top_k = parameters.get("top_k") or DEFAULT_TOP_K
        mask = tokenizer.mask_token
        for i, text in enumerate(inputs):
            if text.count(mask) != 1:
                where = f"inputs[{i}]" if len(inputs) > 1 else "inputs"
                raise InvalidRequest(f"{where} must hold exactly one {mask} token; it holds "
                                     f"{text.count(mask)}.", param=where, code="invalid_mask")
        results: list[Any] = [None] * len(inputs)
        for chunk, batch in length_sorted_batches(tokenizer, inputs, max_length, PREDICT_BATCH):
            rows = [ids[keep.bool()] for ids, keep in
                    zip(batch["input_ids"], batch["attention_mask"], strict=True)]
            positions = [_mask_position(tokenizer, ids, max_length) for ids in rows]
            logits = model(**batch.to(model.device)).logits
            for row, i in enumerate(chunk):
                results[i] = _candidates(tokenizer, rows[row], positions[row],
                                         logits[row, positions[row]].float().cpu(), top_k)
        return results


def _mask_position(tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor,
                   max_length: int) -> int:
    where = (ids == tokenizer.mask_token_id).nonzero()
    if where.numel() == 0:
        raise InvalidRequest(f"The {tokenizer.mask_token} token lies beyond the first "
                             f"{max_length} tokens.", param="inputs", code="invalid_mask")
    return int(where[0, 0])


def _candidates(tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor, position: int,
                logits: torch.Tensor, top_k: int) -> list[dict[str, Any]]:
    """The top_k tokens for the mask, each with the input it completes."""
    # Scores stay the model's probabilities over the whole vocabulary.
    probabilities = torch.softmax(logits, dim=-1)
    results = []
    for token in _words_by_probability(tokenizer, probabilities, top_k):
        filled = ids.clone()
        filled[position] = token
        results.append({"score": float(probabilities[token]), "token": token,
                        "token_str": _text(tokenizer, [token]).strip(),
                        "sequence": _text(tokenizer, filled.tolist())})
    return results


def _words_by_probability(tokenizer: PreTrainedTokenizerBase, probabilities: torch.Tensor,
                          top_k: int) -> list[int]:
    """The `top_k` likeliest tokens that fill a mask with text.

    A special token ([CLS], [PAD], [MASK], ...) or one that decodes to nothing is no answer
    to fill-mask, however likely an undertrained model finds it: it is passed over, and the
    next likeliest token takes its place.
    """
    special = set(tokenizer.all_special_ids)
    vocabulary = probabilities.numel()
    # Enough for every special token to rank above the answers; rarely widened further.
    wanted = top_k + len(special)
    while True:
        ranked = probabilities.topk(min(wanted, vocabulary)).indices.tolist()
        words = [token for token in ranked
                 if token not in special and _text(tokenizer, [token]).strip()]
        if len(words) >= top_k or len(ranked) == vocabulary:
            return words[:top_k]
        wanted *= 2


class CausalLanguageModeling(LanguageModeling):
    name = "causal-lm"
    masked = False
    auto_class = AutoModelForCausalLM

    @torch.inference_mode()
    def predict(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                inputs: list[str], parameters: dict[str, Any], max_length: int) -> list[Any]:
        """Hugging Face text-generation: the prompt and its greedy continuation."""
        new_tokens = parameters.get("max_new_tokens") or DEFAULT_NEW_TOKENS
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
            else tokenizer.eos_token_id
        results = []
        for text in inputs:
            batch = tokenizer(text, truncation=True, max_length=max_length,
                              return_tensors="pt").to(model.device)
            output = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False,
                                    pad_token_id=pad)  # type: ignore[operator]
            # As the HF pipeline does: the caller's prompt verbatim, then what was added.
            prompt = _text(tokenizer, batch["input_ids"][0].tolist())
            full = _text(tokenizer, output[0].tolist())
            results.append([{"generated_text": text + full[len(prompt):]}])
        return results


def _text(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    return str(tokenizer.decode(ids, skip_special_tokens=True))


LANGUAGE_MODELING_TASKS = (MaskedLanguageModeling.name, CausalLanguageModeling.name)
