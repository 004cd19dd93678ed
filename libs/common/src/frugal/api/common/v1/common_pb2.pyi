from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Tier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIER_UNSPECIFIED: _ClassVar[Tier]
    TIER_LITE: _ClassVar[Tier]
    TIER_STANDARD: _ClassVar[Tier]
    TIER_PREMIUM: _ClassVar[Tier]

class CostKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COST_KIND_UNSPECIFIED: _ClassVar[CostKind]
    COST_KIND_LLM: _ClassVar[CostKind]
    COST_KIND_VISION: _ClassVar[CostKind]
    COST_KIND_EMBEDDING: _ClassVar[CostKind]
    COST_KIND_RERANK: _ClassVar[CostKind]
    COST_KIND_STT: _ClassVar[CostKind]
    COST_KIND_TTS: _ClassVar[CostKind]
TIER_UNSPECIFIED: Tier
TIER_LITE: Tier
TIER_STANDARD: Tier
TIER_PREMIUM: Tier
COST_KIND_UNSPECIFIED: CostKind
COST_KIND_LLM: CostKind
COST_KIND_VISION: CostKind
COST_KIND_EMBEDDING: CostKind
COST_KIND_RERANK: CostKind
COST_KIND_STT: CostKind
COST_KIND_TTS: CostKind

class Usage(_message.Message):
    __slots__ = ("input_tokens", "output_tokens", "audio_seconds", "characters", "images", "requests", "estimated", "cached_input_tokens")
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CHARACTERS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    input_tokens: int
    output_tokens: int
    audio_seconds: float
    characters: int
    images: int
    requests: int
    estimated: bool
    cached_input_tokens: int
    def __init__(self, input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., audio_seconds: _Optional[float] = ..., characters: _Optional[int] = ..., images: _Optional[int] = ..., requests: _Optional[int] = ..., estimated: _Optional[bool] = ..., cached_input_tokens: _Optional[int] = ...) -> None: ...

class ProviderInfo(_message.Message):
    __slots__ = ("provider", "model", "offline")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_FIELD_NUMBER: _ClassVar[int]
    provider: str
    model: str
    offline: bool
    def __init__(self, provider: _Optional[str] = ..., model: _Optional[str] = ..., offline: _Optional[bool] = ...) -> None: ...

class TierMix(_message.Message):
    __slots__ = ("lite", "standard", "premium")
    LITE_FIELD_NUMBER: _ClassVar[int]
    STANDARD_FIELD_NUMBER: _ClassVar[int]
    PREMIUM_FIELD_NUMBER: _ClassVar[int]
    lite: float
    standard: float
    premium: float
    def __init__(self, lite: _Optional[float] = ..., standard: _Optional[float] = ..., premium: _Optional[float] = ...) -> None: ...
