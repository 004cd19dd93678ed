from frugal.api.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_USER: _ClassVar[Role]
    ROLE_ASSISTANT: _ClassVar[Role]
    ROLE_SYSTEM: _ClassVar[Role]
    ROLE_TOOL: _ClassVar[Role]

class ContextSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTEXT_SOURCE_UNSPECIFIED: _ClassVar[ContextSource]
    CONTEXT_SOURCE_RAG: _ClassVar[ContextSource]
    CONTEXT_SOURCE_VISION: _ClassVar[ContextSource]

class ContextState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTEXT_STATE_UNSPECIFIED: _ClassVar[ContextState]
    CONTEXT_STATE_USED: _ClassVar[ContextState]
    CONTEXT_STATE_EMPTY: _ClassVar[ContextState]
    CONTEXT_STATE_SKIPPED: _ClassVar[ContextState]
    CONTEXT_STATE_UNAVAILABLE: _ClassVar[ContextState]
    CONTEXT_STATE_TIMEOUT: _ClassVar[ContextState]
ROLE_UNSPECIFIED: Role
ROLE_USER: Role
ROLE_ASSISTANT: Role
ROLE_SYSTEM: Role
ROLE_TOOL: Role
CONTEXT_SOURCE_UNSPECIFIED: ContextSource
CONTEXT_SOURCE_RAG: ContextSource
CONTEXT_SOURCE_VISION: ContextSource
CONTEXT_STATE_UNSPECIFIED: ContextState
CONTEXT_STATE_USED: ContextState
CONTEXT_STATE_EMPTY: ContextState
CONTEXT_STATE_SKIPPED: ContextState
CONTEXT_STATE_UNAVAILABLE: ContextState
CONTEXT_STATE_TIMEOUT: ContextState

class ToolDefinition(_message.Message):
    __slots__ = ("name", "description", "parameters_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    parameters_json: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., parameters_json: _Optional[str] = ...) -> None: ...

class ToolCall(_message.Message):
    __slots__ = ("id", "name", "arguments_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    arguments_json: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., arguments_json: _Optional[str] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content", "tool_calls", "tool_call_id", "tool_error")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_ERROR_FIELD_NUMBER: _ClassVar[int]
    role: Role
    content: str
    tool_calls: _containers.RepeatedCompositeFieldContainer[ToolCall]
    tool_call_id: str
    tool_error: bool
    def __init__(self, role: _Optional[_Union[Role, str]] = ..., content: _Optional[str] = ..., tool_calls: _Optional[_Iterable[_Union[ToolCall, _Mapping]]] = ..., tool_call_id: _Optional[str] = ..., tool_error: _Optional[bool] = ...) -> None: ...

class TurnInput(_message.Message):
    __slots__ = ("text", "history", "rag_context_chars", "vision_context_chars")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    RAG_CONTEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    VISION_CONTEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    text: str
    history: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    rag_context_chars: int
    vision_context_chars: int
    def __init__(self, text: _Optional[str] = ..., history: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., rag_context_chars: _Optional[int] = ..., vision_context_chars: _Optional[int] = ...) -> None: ...

class Features(_message.Message):
    __slots__ = ("length_chars", "word_count", "question_count", "has_code", "technical_terms", "reasoning_terms", "data_terms", "conversation_depth", "rag_context_chars", "vision_context_chars")
    LENGTH_CHARS_FIELD_NUMBER: _ClassVar[int]
    WORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    QUESTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    HAS_CODE_FIELD_NUMBER: _ClassVar[int]
    TECHNICAL_TERMS_FIELD_NUMBER: _ClassVar[int]
    REASONING_TERMS_FIELD_NUMBER: _ClassVar[int]
    DATA_TERMS_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_DEPTH_FIELD_NUMBER: _ClassVar[int]
    RAG_CONTEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    VISION_CONTEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    length_chars: int
    word_count: int
    question_count: int
    has_code: bool
    technical_terms: int
    reasoning_terms: int
    data_terms: int
    conversation_depth: int
    rag_context_chars: int
    vision_context_chars: int
    def __init__(self, length_chars: _Optional[int] = ..., word_count: _Optional[int] = ..., question_count: _Optional[int] = ..., has_code: _Optional[bool] = ..., technical_terms: _Optional[int] = ..., reasoning_terms: _Optional[int] = ..., data_terms: _Optional[int] = ..., conversation_depth: _Optional[int] = ..., rag_context_chars: _Optional[int] = ..., vision_context_chars: _Optional[int] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("score", "tier", "model", "provider", "scorer", "features", "thresholds", "estimated_input_tokens", "estimated_output_tokens", "estimated_cost_usd", "override_reason")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    SCORER_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_COST_USD_FIELD_NUMBER: _ClassVar[int]
    OVERRIDE_REASON_FIELD_NUMBER: _ClassVar[int]
    score: float
    tier: _common_pb2.Tier
    model: str
    provider: str
    scorer: str
    features: Features
    thresholds: _containers.RepeatedScalarFieldContainer[float]
    estimated_input_tokens: int
    estimated_output_tokens: int
    estimated_cost_usd: float
    override_reason: str
    def __init__(self, score: _Optional[float] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., model: _Optional[str] = ..., provider: _Optional[str] = ..., scorer: _Optional[str] = ..., features: _Optional[_Union[Features, _Mapping]] = ..., thresholds: _Optional[_Iterable[float]] = ..., estimated_input_tokens: _Optional[int] = ..., estimated_output_tokens: _Optional[int] = ..., estimated_cost_usd: _Optional[float] = ..., override_reason: _Optional[str] = ...) -> None: ...

class RouteRequest(_message.Message):
    __slots__ = ("turn", "scorer")
    TURN_FIELD_NUMBER: _ClassVar[int]
    SCORER_FIELD_NUMBER: _ClassVar[int]
    turn: TurnInput
    scorer: str
    def __init__(self, turn: _Optional[_Union[TurnInput, _Mapping]] = ..., scorer: _Optional[str] = ...) -> None: ...

class RouteResponse(_message.Message):
    __slots__ = ("decision",)
    DECISION_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    def __init__(self, decision: _Optional[_Union[Decision, _Mapping]] = ...) -> None: ...

class RespondRequest(_message.Message):
    __slots__ = ("turn", "turn_id", "skip_rag", "skip_vision", "max_output_tokens", "scorer", "tools", "instructions")
    TURN_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    SKIP_RAG_FIELD_NUMBER: _ClassVar[int]
    SKIP_VISION_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SCORER_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    turn: TurnInput
    turn_id: str
    skip_rag: bool
    skip_vision: bool
    max_output_tokens: int
    scorer: str
    tools: _containers.RepeatedCompositeFieldContainer[ToolDefinition]
    instructions: str
    def __init__(self, turn: _Optional[_Union[TurnInput, _Mapping]] = ..., turn_id: _Optional[str] = ..., skip_rag: _Optional[bool] = ..., skip_vision: _Optional[bool] = ..., max_output_tokens: _Optional[int] = ..., scorer: _Optional[str] = ..., tools: _Optional[_Iterable[_Union[ToolDefinition, _Mapping]]] = ..., instructions: _Optional[str] = ...) -> None: ...

class ContextStatus(_message.Message):
    __slots__ = ("source", "state", "items", "chars", "detail")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    CHARS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    source: ContextSource
    state: ContextState
    items: int
    chars: int
    detail: str
    def __init__(self, source: _Optional[_Union[ContextSource, str]] = ..., state: _Optional[_Union[ContextState, str]] = ..., items: _Optional[int] = ..., chars: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class Fallback(_message.Message):
    __slots__ = ("from_model", "to_model", "reason")
    FROM_MODEL_FIELD_NUMBER: _ClassVar[int]
    TO_MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    from_model: str
    to_model: str
    reason: str
    def __init__(self, from_model: _Optional[str] = ..., to_model: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RespondStarted(_message.Message):
    __slots__ = ("decision", "context")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    context: _containers.RepeatedCompositeFieldContainer[ContextStatus]
    def __init__(self, decision: _Optional[_Union[Decision, _Mapping]] = ..., context: _Optional[_Iterable[_Union[ContextStatus, _Mapping]]] = ...) -> None: ...

class TextDelta(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class RespondCompleted(_message.Message):
    __slots__ = ("provider", "tier", "usage", "cost_usd", "baseline_cost_usd", "first_token_latency_ms", "total_latency_ms", "fallbacks", "context", "cost_event_ids", "decision", "degraded")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    BASELINE_COST_USD_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    COST_EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    provider: _common_pb2.ProviderInfo
    tier: _common_pb2.Tier
    usage: _common_pb2.Usage
    cost_usd: float
    baseline_cost_usd: float
    first_token_latency_ms: float
    total_latency_ms: float
    fallbacks: _containers.RepeatedCompositeFieldContainer[Fallback]
    context: _containers.RepeatedCompositeFieldContainer[ContextStatus]
    cost_event_ids: _containers.RepeatedScalarFieldContainer[str]
    decision: Decision
    degraded: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, provider: _Optional[_Union[_common_pb2.ProviderInfo, _Mapping]] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., cost_usd: _Optional[float] = ..., baseline_cost_usd: _Optional[float] = ..., first_token_latency_ms: _Optional[float] = ..., total_latency_ms: _Optional[float] = ..., fallbacks: _Optional[_Iterable[_Union[Fallback, _Mapping]]] = ..., context: _Optional[_Iterable[_Union[ContextStatus, _Mapping]]] = ..., cost_event_ids: _Optional[_Iterable[str]] = ..., decision: _Optional[_Union[Decision, _Mapping]] = ..., degraded: _Optional[_Iterable[str]] = ...) -> None: ...

class RespondResponse(_message.Message):
    __slots__ = ("started", "delta", "completed", "tool_call", "provider")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    started: RespondStarted
    delta: TextDelta
    completed: RespondCompleted
    tool_call: ToolCall
    provider: _common_pb2.ProviderInfo
    def __init__(self, started: _Optional[_Union[RespondStarted, _Mapping]] = ..., delta: _Optional[_Union[TextDelta, _Mapping]] = ..., completed: _Optional[_Union[RespondCompleted, _Mapping]] = ..., tool_call: _Optional[_Union[ToolCall, _Mapping]] = ..., provider: _Optional[_Union[_common_pb2.ProviderInfo, _Mapping]] = ...) -> None: ...
