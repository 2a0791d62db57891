"""Request bodies of the HTTP API, as pydantic models: what the OpenAPI page documents, and the
first check of every request (types, unknown fields, sizes). The values themselves are then
checked by ``ExpandRequest.create``, the same path ``tipo expand --input`` lines take."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

Text = Annotated[StrictStr, Field(description="SD-WebUI prompt syntax")]
Number = Annotated[float, Field(allow_inf_nan=False)]
LENGTHS = "very_short, short, long or very_long"


class ExpandBody(BaseModel):
    """The options of a ``tipo expand --input`` line, plus ``variants`` and ``stream``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    tags: Text | list[StrictStr] = ""
    nl: Text = Field("", description="a sentence to extend")
    tag_length: StrictStr | None = Field(None, description=LENGTHS)
    nl_length: StrictStr | None = Field(None, description=LENGTHS)
    template: StrictStr | None = Field(None, description="a template name or template text")
    ban: StrictStr | list[StrictStr] = Field(
        (), description="tags to ban (comma-separated or a list): substring or regex"
    )
    seed: StrictInt | None = Field(None, ge=0, lt=2**63, description="default: random")
    aspect: StrictStr | Number | None = Field(None, description="0.75, 832x1216 or 3:4")
    width: StrictInt | None = Field(None, gt=0, le=65536)
    height: StrictInt | None = Field(None, gt=0, le=65536)
    expand_tags: StrictBool = True
    expand_nl: StrictBool = True
    tag_first: StrictBool = True
    gen_meta: StrictBool = False
    shuffle: StrictBool = True
    retries: StrictInt = Field(0, ge=0)
    control: StrictBool = True
    vocabulary: StrictBool = True
    operation: StrictStr | None = Field(None, description="run one task instead of the plan")
    temperature: Number | None = None
    top_p: Number | None = None
    top_k: StrictInt | None = None
    min_p: Number | None = None
    repetition_penalty: Number | None = None
    max_new_tokens: StrictInt | None = Field(None, description="per step")
    variants: StrictInt = Field(1, ge=1, description="prompts from seeds seed, seed+1, ...")
    stream: StrictBool = Field(False, description="answer with Server-Sent Events")

    def request_options(self) -> dict[str, Any]:
        """The options given, for ExpandRequest.create."""
        options = self.model_dump(exclude_unset=True, exclude={"variants", "stream"})
        return {k: v for k, v in options.items() if v is not None}


class ProtocolBody(BaseModel):
    """The fields of a ``tipo protocol`` line: a model-facing request, built exactly."""

    model_config = ConfigDict(extra="forbid", strict=True)

    tags: list[StrictStr] = []
    nl: StrictStr = ""
    task: StrictStr | None = Field(None, description="tag_to_long, long_to_tag, ... or null")
    length: StrictStr | None = Field(None, description=LENGTHS)
    meta: dict[StrictStr, StrictStr | list[StrictStr] | Number | None] = {}
    gen_meta: StrictBool = False
    expand: StrictBool = True


__all__ = ["ExpandBody", "ProtocolBody"]
