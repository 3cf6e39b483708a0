"""Shared unit fixtures: a tiny BERT saved to disk once per session, and its tokenizer."""

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from app.ml.tasks.classification import TextClassification
from tests.unit.tiny_model import build_tiny_bert

# The models here are tiny: one thread is faster than many competing for shared cores.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny random BERT (safetensors) and its tokenizer."""
    return build_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def task() -> TextClassification:
    return TextClassification()
