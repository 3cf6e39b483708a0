"""A tiny BERT (random weights) and matching word-level tokenizer, built on the fly.

Training it for a few steps takes well under a second, so tests exercise the real
Trainer, tokenizer and safetensors code paths without downloading anything.
"""

from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE_WORDS = ["good", "great", "fine", "love", "happy", "nice", "superb", "fun"]
NEGATIVE_WORDS = ["bad", "awful", "sad", "hate", "poor", "ugly", "dull", "boring"]
NEUTRAL_WORDS = ["the", "movie", "film", "was", "is", "a", "plot", "story", "and", "very",
                 "acting", "really", "this", "it", "ok", "so"]
VOCAB = SPECIAL_TOKENS + POSITIVE_WORDS + NEGATIVE_WORDS + NEUTRAL_WORDS


def sentiment_rows(n: int) -> list[dict[str, str]]:
    """`n` deterministic rows, alternating positive and negative, made of vocabulary words."""
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        words = POSITIVE_WORDS if positive else NEGATIVE_WORDS
        subject = NEUTRAL_WORDS[(i // 2) % len(NEUTRAL_WORDS)]
        text = f"the {subject} was {words[i % len(words)]} and {words[(i // 3) % len(words)]}"
        rows.append({"text": text, "label": "positive" if positive else "negative"})
    return rows


def build_tiny_bert(directory: Path) -> Path:
    """Write a tiny random BERT (safetensors) and its tokenizer into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    # Loading from a folder holding only vocab.txt builds a WordPiece tokenizer from it.
    tokenizer = BertTokenizerFast.from_pretrained(directory, do_lower_case=True,
                                                  model_max_length=64)
    if tokenizer.convert_tokens_to_ids("good") == tokenizer.unk_token_id:
        raise RuntimeError("tiny tokenizer did not pick up vocab.txt")
    tokenizer.save_pretrained(directory)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=37,
                        max_position_embeddings=64, pad_token_id=0,
                        # Wide initial weights: different inputs get clearly different scores.
                        initializer_range=0.5)
    # Seeded, so every run of the suite trains from the same weights.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = BertModel(config)
    model.save_pretrained(directory, safe_serialization=True)
    return directory
