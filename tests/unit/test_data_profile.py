"""What the automatic hyperparameters are told about a job's rows and base model, measured with
the base model's own tokenizer."""

from app.ml.base_models import bundled_minilm_dir
from app.ml.tasks.catalog import get_task
from app.ml.training import data_profile

MINILM = str(bundled_minilm_dir())


def _rows(words_per_row: list[int]) -> list[dict[str, str]]:
    return [{"text": " ".join(["movie"] * n), "label": "pos" if i % 2 else "neg"}
            for i, n in enumerate(words_per_row)]


def test_the_profile_holds_the_row_count_model_size_and_input_limit() -> None:
    profile = data_profile(get_task("text-classification"), _rows([5] * 10), MINILM)
    assert profile.n_rows == 10
    assert profile.parameters is not None and 20_000_000 < profile.parameters < 25_000_000
    assert profile.max_positions == 512


def test_the_long_row_length_is_the_99th_percentile_in_tokens() -> None:
    # 99 short rows and one long one: the longest 1% may be cut, so the long row is not the bar.
    profile = data_profile(get_task("text-classification"), _rows([5] * 99 + [400]), MINILM)
    assert profile.long_row_tokens == 5 + 2  # "movie" is one token, plus [CLS] and [SEP]
    profile = data_profile(get_task("text-classification"), _rows([5] * 90 + [300] * 10),
                           MINILM)
    assert profile.long_row_tokens == 302


def test_sentence_pairs_are_measured_together() -> None:
    rows = [{"text": "movie " * 100, "text_pair": "movie " * 100, "label": "same"}] * 3
    profile = data_profile(get_task("text-classification"), rows, MINILM)
    assert profile.long_row_tokens == 203  # [CLS] a [SEP] b [SEP]


def test_tasks_that_never_cut_rows_are_not_measured() -> None:
    rows = [{"tokens": ["Paris"] * 300, "tags": ["B-LOC"] * 300}]
    assert data_profile(get_task("token-classification"), rows, MINILM).long_row_tokens is None
