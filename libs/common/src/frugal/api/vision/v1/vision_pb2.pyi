from frugal.api.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FrameFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRAME_FORMAT_UNSPECIFIED: _ClassVar[FrameFormat]
    FRAME_FORMAT_I420: _ClassVar[FrameFormat]
    FRAME_FORMAT_RGB24: _ClassVar[FrameFormat]
    FRAME_FORMAT_JPEG: _ClassVar[FrameFormat]
    FRAME_FORMAT_PNG: _ClassVar[FrameFormat]

class VerdictKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_KIND_UNSPECIFIED: _ClassVar[VerdictKind]
    VERDICT_KIND_KEPT: _ClassVar[VerdictKind]
    VERDICT_KIND_SKIPPED: _ClassVar[VerdictKind]
    VERDICT_KIND_ERROR: _ClassVar[VerdictKind]
FRAME_FORMAT_UNSPECIFIED: FrameFormat
FRAME_FORMAT_I420: FrameFormat
FRAME_FORMAT_RGB24: FrameFormat
FRAME_FORMAT_JPEG: FrameFormat
FRAME_FORMAT_PNG: FrameFormat
VERDICT_KIND_UNSPECIFIED: VerdictKind
VERDICT_KIND_KEPT: VerdictKind
VERDICT_KIND_SKIPPED: VerdictKind
VERDICT_KIND_ERROR: VerdictKind

class I420Planes(_message.Message):
    __slots__ = ("y", "u", "v", "stride_y", "stride_u", "stride_v")
    Y_FIELD_NUMBER: _ClassVar[int]
    U_FIELD_NUMBER: _ClassVar[int]
    V_FIELD_NUMBER: _ClassVar[int]
    STRIDE_Y_FIELD_NUMBER: _ClassVar[int]
    STRIDE_U_FIELD_NUMBER: _ClassVar[int]
    STRIDE_V_FIELD_NUMBER: _ClassVar[int]
    y: bytes
    u: bytes
    v: bytes
    stride_y: int
    stride_u: int
    stride_v: int
    def __init__(self, y: _Optional[bytes] = ..., u: _Optional[bytes] = ..., v: _Optional[bytes] = ..., stride_y: _Optional[int] = ..., stride_u: _Optional[int] = ..., stride_v: _Optional[int] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("format", "width", "height", "timestamp_ms", "track_id", "user_speaking", "sequence", "data", "i420")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    USER_SPEAKING_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    I420_FIELD_NUMBER: _ClassVar[int]
    format: FrameFormat
    width: int
    height: int
    timestamp_ms: int
    track_id: str
    user_speaking: bool
    sequence: int
    data: bytes
    i420: I420Planes
    def __init__(self, format: _Optional[_Union[FrameFormat, str]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., timestamp_ms: _Optional[int] = ..., track_id: _Optional[str] = ..., user_speaking: _Optional[bool] = ..., sequence: _Optional[int] = ..., data: _Optional[bytes] = ..., i420: _Optional[_Union[I420Planes, _Mapping]] = ...) -> None: ...

class StreamFramesRequest(_message.Message):
    __slots__ = ("frame",)
    FRAME_FIELD_NUMBER: _ClassVar[int]
    frame: Frame
    def __init__(self, frame: _Optional[_Union[Frame, _Mapping]] = ...) -> None: ...

class FrameVerdict(_message.Message):
    __slots__ = ("sequence", "track_id", "timestamp_ms", "kind", "reason", "hash", "distance", "changed_area", "change_x", "change_y", "change_width", "change_height", "processing_ms", "by_timer")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AREA_FIELD_NUMBER: _ClassVar[int]
    CHANGE_X_FIELD_NUMBER: _ClassVar[int]
    CHANGE_Y_FIELD_NUMBER: _ClassVar[int]
    CHANGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_MS_FIELD_NUMBER: _ClassVar[int]
    BY_TIMER_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    track_id: str
    timestamp_ms: int
    kind: VerdictKind
    reason: str
    hash: str
    distance: int
    changed_area: float
    change_x: int
    change_y: int
    change_width: int
    change_height: int
    processing_ms: float
    by_timer: bool
    def __init__(self, sequence: _Optional[int] = ..., track_id: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., kind: _Optional[_Union[VerdictKind, str]] = ..., reason: _Optional[str] = ..., hash: _Optional[str] = ..., distance: _Optional[int] = ..., changed_area: _Optional[float] = ..., change_x: _Optional[int] = ..., change_y: _Optional[int] = ..., change_width: _Optional[int] = ..., change_height: _Optional[int] = ..., processing_ms: _Optional[float] = ..., by_timer: _Optional[bool] = ...) -> None: ...

class FrameAnalysis(_message.Message):
    __slots__ = ("sequence", "track_id", "timestamp_ms", "description", "provider", "usage", "cost_usd", "coalesced_frames", "completed_at_ms")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    COALESCED_FRAMES_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    track_id: str
    timestamp_ms: int
    description: str
    provider: _common_pb2.ProviderInfo
    usage: _common_pb2.Usage
    cost_usd: float
    coalesced_frames: int
    completed_at_ms: int
    def __init__(self, sequence: _Optional[int] = ..., track_id: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., description: _Optional[str] = ..., provider: _Optional[_Union[_common_pb2.ProviderInfo, _Mapping]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., cost_usd: _Optional[float] = ..., coalesced_frames: _Optional[int] = ..., completed_at_ms: _Optional[int] = ...) -> None: ...

class StreamFramesResponse(_message.Message):
    __slots__ = ("verdict", "analysis")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    ANALYSIS_FIELD_NUMBER: _ClassVar[int]
    verdict: FrameVerdict
    analysis: FrameAnalysis
    def __init__(self, verdict: _Optional[_Union[FrameVerdict, _Mapping]] = ..., analysis: _Optional[_Union[FrameAnalysis, _Mapping]] = ...) -> None: ...

class GetContextRequest(_message.Message):
    __slots__ = ("session_id", "limit")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    limit: int
    def __init__(self, session_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class GetContextResponse(_message.Message):
    __slots__ = ("analyses",)
    ANALYSES_FIELD_NUMBER: _ClassVar[int]
    analyses: _containers.RepeatedCompositeFieldContainer[FrameAnalysis]
    def __init__(self, analyses: _Optional[_Iterable[_Union[FrameAnalysis, _Mapping]]] = ...) -> None: ...
