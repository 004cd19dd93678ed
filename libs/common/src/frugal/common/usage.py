"""Usage amounts and their conversion to and from the proto message."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from frugal.api.common.v1 import common_pb2


class UsageAmounts(BaseModel):
    """What a paid call consumed; `estimated` marks numbers we computed rather than the provider."""

    model_config = ConfigDict(frozen=True)

    input_tokens: int = Field(default=0, ge=0)
    # Of input_tokens, those the provider served from its prompt cache (Anthropic cache_read_input_tokens,
    # Gemini cached_content_token_count): priced at the catalog's cached-input price.
    cached_input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    audio_seconds: float = Field(default=0.0, ge=0)
    characters: int = Field(default=0, ge=0)
    images: int = Field(default=0, ge=0)
    requests: int = Field(default=0, ge=0)
    estimated: bool = False

    @model_validator(mode="after")
    def _cached_within_input(self) -> UsageAmounts:
        if self.cached_input_tokens > self.input_tokens:
            raise ValueError("cached_input_tokens must not exceed input_tokens (they are a part of them)")
        return self

    def to_proto(self) -> common_pb2.Usage:
        return common_pb2.Usage(
            input_tokens=self.input_tokens,
            cached_input_tokens=self.cached_input_tokens,
            output_tokens=self.output_tokens,
            audio_seconds=self.audio_seconds,
            characters=self.characters,
            images=self.images,
            requests=self.requests,
            estimated=self.estimated,
        )

    @classmethod
    def from_proto(cls, msg: common_pb2.Usage) -> UsageAmounts:
        return cls(
            input_tokens=msg.input_tokens,
            cached_input_tokens=msg.cached_input_tokens,
            output_tokens=msg.output_tokens,
            audio_seconds=msg.audio_seconds,
            characters=msg.characters,
            images=msg.images,
            requests=msg.requests,
            estimated=msg.estimated,
        )
