from typing import Annotated, Any, Literal

from pydantic import Field

from app.schemas.common import NOT_BLANK, StrictModel


class PredictParameters(StrictModel):
    """The Hugging Face Inference API's parameters; each task reads the ones it knows."""

    # Text classification.
    top_k: Annotated[int, Field(ge=1, le=1000)] | None = None
    # Accepted for the Hugging Face API's sake; the text is always truncated to max_length.
    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = None
    truncation: bool | None = None
    # Token classification.
    aggregation_strategy: Literal["none", "simple", "first", "average", "max"] | None = None
    ignore_labels: Annotated[list[Annotated[str, Field(max_length=100)]],
                             Field(max_length=1000)] | None = None
    # Overlap, in tokens, between the windows a long input is cut into.
    stride: Annotated[int, Field(ge=0, le=256)] | None = None
    # Text generation (causal-lm); fill-mask (masked-lm) reads top_k.
    max_new_tokens: Annotated[int, Field(ge=1, le=256)] | None = None


Text = Annotated[str, Field(min_length=1, pattern=NOT_BLANK)]


class PredictRequest(StrictModel):
    inputs: Text | Annotated[list[Text], Field(min_length=1)]
    parameters: PredictParameters | None = None

    @property
    def batched(self) -> bool:
        """A list of inputs, even of one; a single string gets the single-input shape."""
        return not isinstance(self.inputs, str)

    def as_list(self) -> list[str]:
        return [self.inputs] if isinstance(self.inputs, str) else list(self.inputs)

    def parameter_dict(self) -> dict[str, Any]:
        return self.parameters.model_dump(exclude_none=True) if self.parameters else {}
