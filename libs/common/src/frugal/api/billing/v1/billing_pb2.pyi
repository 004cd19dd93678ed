import datetime

from frugal.api.common.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BudgetStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUDGET_STATUS_UNSPECIFIED: _ClassVar[BudgetStatus]
    BUDGET_STATUS_UNLIMITED: _ClassVar[BudgetStatus]
    BUDGET_STATUS_OK: _ClassVar[BudgetStatus]
    BUDGET_STATUS_DOWNGRADE: _ClassVar[BudgetStatus]
    BUDGET_STATUS_EXHAUSTED: _ClassVar[BudgetStatus]
BUDGET_STATUS_UNSPECIFIED: BudgetStatus
BUDGET_STATUS_UNLIMITED: BudgetStatus
BUDGET_STATUS_OK: BudgetStatus
BUDGET_STATUS_DOWNGRADE: BudgetStatus
BUDGET_STATUS_EXHAUSTED: BudgetStatus

class TenantPolicy(_message.Message):
    __slots__ = ("tenant_id", "display_name", "plan", "monthly_budget_usd", "requests_per_minute", "tokens_per_minute", "target_mix", "max_tier", "pinned_tier", "instructions", "knowledge_base_enabled", "downgrade_at", "refuse_at")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_BUDGET_USD_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    TARGET_MIX_FIELD_NUMBER: _ClassVar[int]
    MAX_TIER_FIELD_NUMBER: _ClassVar[int]
    PINNED_TIER_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    KNOWLEDGE_BASE_ENABLED_FIELD_NUMBER: _ClassVar[int]
    DOWNGRADE_AT_FIELD_NUMBER: _ClassVar[int]
    REFUSE_AT_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    display_name: str
    plan: str
    monthly_budget_usd: float
    requests_per_minute: int
    tokens_per_minute: int
    target_mix: _common_pb2.TierMix
    max_tier: _common_pb2.Tier
    pinned_tier: _common_pb2.Tier
    instructions: str
    knowledge_base_enabled: bool
    downgrade_at: float
    refuse_at: float
    def __init__(self, tenant_id: _Optional[str] = ..., display_name: _Optional[str] = ..., plan: _Optional[str] = ..., monthly_budget_usd: _Optional[float] = ..., requests_per_minute: _Optional[int] = ..., tokens_per_minute: _Optional[int] = ..., target_mix: _Optional[_Union[_common_pb2.TierMix, _Mapping]] = ..., max_tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., pinned_tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., instructions: _Optional[str] = ..., knowledge_base_enabled: _Optional[bool] = ..., downgrade_at: _Optional[float] = ..., refuse_at: _Optional[float] = ...) -> None: ...

class ResolveTenantRequest(_message.Message):
    __slots__ = ("room_name",)
    ROOM_NAME_FIELD_NUMBER: _ClassVar[int]
    room_name: str
    def __init__(self, room_name: _Optional[str] = ...) -> None: ...

class ResolveTenantResponse(_message.Message):
    __slots__ = ("tenant_id", "room", "policy")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ROOM_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    room: str
    policy: TenantPolicy
    def __init__(self, tenant_id: _Optional[str] = ..., room: _Optional[str] = ..., policy: _Optional[_Union[TenantPolicy, _Mapping]] = ...) -> None: ...

class GetTenantPolicyRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class GetTenantPolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: TenantPolicy
    def __init__(self, policy: _Optional[_Union[TenantPolicy, _Mapping]] = ...) -> None: ...

class UpsertTenantRequest(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: TenantPolicy
    def __init__(self, policy: _Optional[_Union[TenantPolicy, _Mapping]] = ...) -> None: ...

class UpsertTenantResponse(_message.Message):
    __slots__ = ("policy", "created")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    policy: TenantPolicy
    created: bool
    def __init__(self, policy: _Optional[_Union[TenantPolicy, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("start", "end", "session_id")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    session_id: str
    def __init__(self, start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., session_id: _Optional[str] = ...) -> None: ...

class SessionKindCost(_message.Message):
    __slots__ = ("kind", "cost_usd", "naive_usd", "savings", "events", "estimated", "audio_seconds", "characters", "input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens", "images", "requests", "cache_hit_characters")
    KIND_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    NAIVE_USD_FIELD_NUMBER: _ClassVar[int]
    SAVINGS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_FIELD_NUMBER: _ClassVar[int]
    AUDIO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CHARACTERS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_CHARACTERS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    cost_usd: float
    naive_usd: float
    savings: float
    events: int
    estimated: bool
    audio_seconds: float
    characters: int
    input_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    output_tokens: int
    images: int
    requests: int
    cache_hit_characters: int
    def __init__(self, kind: _Optional[str] = ..., cost_usd: _Optional[float] = ..., naive_usd: _Optional[float] = ..., savings: _Optional[float] = ..., events: _Optional[int] = ..., estimated: _Optional[bool] = ..., audio_seconds: _Optional[float] = ..., characters: _Optional[int] = ..., input_tokens: _Optional[int] = ..., cached_input_tokens: _Optional[int] = ..., cache_write_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., images: _Optional[int] = ..., requests: _Optional[int] = ..., cache_hit_characters: _Optional[int] = ...) -> None: ...

class SessionCost(_message.Message):
    __slots__ = ("kinds", "cost_usd", "naive_usd", "savings", "session_minutes", "cost_per_minute_usd", "naive_per_minute_usd", "estimated", "offline_rule", "naive_answer_characters", "sessions")
    KINDS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    NAIVE_USD_FIELD_NUMBER: _ClassVar[int]
    SAVINGS_FIELD_NUMBER: _ClassVar[int]
    SESSION_MINUTES_FIELD_NUMBER: _ClassVar[int]
    COST_PER_MINUTE_USD_FIELD_NUMBER: _ClassVar[int]
    NAIVE_PER_MINUTE_USD_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_RULE_FIELD_NUMBER: _ClassVar[int]
    NAIVE_ANSWER_CHARACTERS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    kinds: _containers.RepeatedCompositeFieldContainer[SessionKindCost]
    cost_usd: float
    naive_usd: float
    savings: float
    session_minutes: float
    cost_per_minute_usd: float
    naive_per_minute_usd: float
    estimated: bool
    offline_rule: str
    naive_answer_characters: int
    sessions: int
    def __init__(self, kinds: _Optional[_Iterable[_Union[SessionKindCost, _Mapping]]] = ..., cost_usd: _Optional[float] = ..., naive_usd: _Optional[float] = ..., savings: _Optional[float] = ..., session_minutes: _Optional[float] = ..., cost_per_minute_usd: _Optional[float] = ..., naive_per_minute_usd: _Optional[float] = ..., estimated: _Optional[bool] = ..., offline_rule: _Optional[str] = ..., naive_answer_characters: _Optional[int] = ..., sessions: _Optional[int] = ...) -> None: ...

class UsageBreakdown(_message.Message):
    __slots__ = ("key", "cost_usd", "baseline_cost_usd", "savings", "events", "usage")
    KEY_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    BASELINE_COST_USD_FIELD_NUMBER: _ClassVar[int]
    SAVINGS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    key: str
    cost_usd: float
    baseline_cost_usd: float
    savings: float
    events: int
    usage: _common_pb2.Usage
    def __init__(self, key: _Optional[str] = ..., cost_usd: _Optional[float] = ..., baseline_cost_usd: _Optional[float] = ..., savings: _Optional[float] = ..., events: _Optional[int] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("tenant_id", "start", "end", "cost_usd", "baseline_cost_usd", "savings", "by_kind", "by_tier", "by_model", "llm_requests", "vision_frames", "events", "estimated_events", "session_cost")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    BASELINE_COST_USD_FIELD_NUMBER: _ClassVar[int]
    SAVINGS_FIELD_NUMBER: _ClassVar[int]
    BY_KIND_FIELD_NUMBER: _ClassVar[int]
    BY_TIER_FIELD_NUMBER: _ClassVar[int]
    BY_MODEL_FIELD_NUMBER: _ClassVar[int]
    LLM_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    VISION_FRAMES_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    SESSION_COST_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    cost_usd: float
    baseline_cost_usd: float
    savings: float
    by_kind: _containers.RepeatedCompositeFieldContainer[UsageBreakdown]
    by_tier: _containers.RepeatedCompositeFieldContainer[UsageBreakdown]
    by_model: _containers.RepeatedCompositeFieldContainer[UsageBreakdown]
    llm_requests: int
    vision_frames: int
    events: int
    estimated_events: int
    session_cost: SessionCost
    def __init__(self, tenant_id: _Optional[str] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cost_usd: _Optional[float] = ..., baseline_cost_usd: _Optional[float] = ..., savings: _Optional[float] = ..., by_kind: _Optional[_Iterable[_Union[UsageBreakdown, _Mapping]]] = ..., by_tier: _Optional[_Iterable[_Union[UsageBreakdown, _Mapping]]] = ..., by_model: _Optional[_Iterable[_Union[UsageBreakdown, _Mapping]]] = ..., llm_requests: _Optional[int] = ..., vision_frames: _Optional[int] = ..., events: _Optional[int] = ..., estimated_events: _Optional[int] = ..., session_cost: _Optional[_Union[SessionCost, _Mapping]] = ...) -> None: ...

class BudgetState(_message.Message):
    __slots__ = ("tenant_id", "month", "spent_usd", "budget_usd", "fraction_used", "status", "updated_at")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    MONTH_FIELD_NUMBER: _ClassVar[int]
    SPENT_USD_FIELD_NUMBER: _ClassVar[int]
    BUDGET_USD_FIELD_NUMBER: _ClassVar[int]
    FRACTION_USED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    month: str
    spent_usd: float
    budget_usd: float
    fraction_used: float
    status: BudgetStatus
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, tenant_id: _Optional[str] = ..., month: _Optional[str] = ..., spent_usd: _Optional[float] = ..., budget_usd: _Optional[float] = ..., fraction_used: _Optional[float] = ..., status: _Optional[_Union[BudgetStatus, str]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetBudgetStateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetBudgetStateResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: BudgetState
    def __init__(self, state: _Optional[_Union[BudgetState, _Mapping]] = ...) -> None: ...
