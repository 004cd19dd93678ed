"""vision-dedup settings (environment variables, validated at start)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from frugal.common.settings import PORTS, ServiceSettings
from frugal.vision.dedup import MAX_VOLATILE_GAP_MS, DedupConfig

_D = DedupConfig()


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    service_name: str = "vision-dedup"
    grpc_port: int = PORTS["vision-dedup"][0]
    metrics_port: int = PORTS["vision-dedup"][1]

    # --- dedup decision (see frugal.vision.dedup for what each one does) ---
    # Global pHash Hamming distance above which a settled frame is always kept.
    phash_threshold: int = Field(default=_D.phash_threshold, ge=0, le=64)
    # A thumbnail pixel (mean of k x k luma pixels) counts as changed when it moved by more than this.
    pixel_diff_threshold: int = Field(default=_D.pixel_diff_threshold, ge=1, le=255)
    # Smallest changed fraction of the frame that is worth a vision call once the screen has settled.
    min_change_area: float = Field(default=_D.min_change_area, gt=0, le=1)
    # Changes at least this large are kept after FAST_SETTLE_MS (slide change, window switch, scroll end).
    large_change_area: float = Field(default=_D.large_change_area, gt=0, le=1)
    # Quiet time required before a small change (typing) is kept, and before a large one is.
    # (Both measured on the sender's timestamps.)
    settle_ms: int = Field(default=_D.settle_ms, ge=0, le=10_000)
    fast_settle_ms: int = Field(default=_D.fast_settle_ms, ge=0, le=10_000)
    # During continuous motion (long scroll, animation, streaming output), keep a checkpoint at most this often.
    max_stale_ms: int = Field(default=_D.max_stale_ms, ge=100, le=600_000)
    max_stale_speaking_ms: int = Field(default=_D.max_stale_speaking_ms, ge=100, le=600_000)
    # A pixel of the change map that changed VOLATILE_MIN_EVENTS times (changes at least
    # VOLATILE_EVENT_SPACING_MS apart, no pause longer than VOLATILE_GAP_MS) is periodic or animated
    # (clock, blinking cursor, small video): it and its neighbours are ignored while that lasts...
    volatile_min_events: int = Field(default=_D.volatile_min_events, ge=2, le=250)
    volatile_event_spacing_ms: int = Field(default=_D.volatile_event_spacing_ms, ge=0, le=10_000)
    volatile_gap_ms: int = Field(default=_D.volatile_gap_ms, ge=50, le=MAX_VOLATILE_GAP_MS)
    # ...unless such regions cover more than this fraction of the frame (then it is real motion).
    max_volatile_area: float = Field(default=_D.max_volatile_area, ge=0, le=1)
    # Neighbourhood (in thumbnail pixels) of a volatile pixel that is ignored with it.
    volatile_dilate: int = Field(default=_D.volatile_dilate, ge=0, le=16)
    # Thumbnail used for the change map: longest side ~ this many pixels (integer downscale of the frame).
    thumb_long_side: int = Field(default=_D.thumb_long_side, ge=32, le=1024)
    tile_size: int = Field(default=_D.tile_size, ge=2, le=128)
    # Detail image (~640 px wide): changes that vanish in the thumbnail (a number in a cell, a line of text).
    detail_diff_threshold: int = Field(default=_D.detail_diff_threshold, ge=1, le=255)
    min_detail_pixels: int = Field(default=_D.min_detail_pixels, ge=1, le=100_000)
    min_detail_motion: int = Field(default=_D.min_detail_motion, ge=1, le=100_000)
    # Largest mouse pointer (detail pixels): a change that is only such a sprite moving is skipped.
    pointer_max_side: int = Field(default=_D.pointer_max_side, ge=0, le=256)

    # --- frame limits ---
    max_frame_width: int = Field(default=7680, ge=16, le=16384)
    max_frame_height: int = Field(default=4320, ge=16, le=16384)
    max_frame_pixels: int = Field(default=7680 * 4320, ge=256)
    # JPEG/PNG larger than this (read from the header, before decoding) are refused: a PNG decodes at full
    # size whatever thumbnail is wanted.
    max_decode_pixels: int = Field(default=3840 * 2160, ge=256)
    # Distinct track ids one StreamFrames call may use (each holds ~2 MB of decision state and one frame).
    max_tracks_per_stream: int = Field(default=4, ge=1, le=64)
    # A stream that sends no frame for this long is closed (DEADLINE_EXCEEDED).
    stream_idle_timeout_s: float = Field(default=300.0, gt=0, le=86_400)

    # --- vision analysis ---
    gemini_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("GEMINI_API_KEY", "GOOGLE_API_KEY", "gemini_api_key")
    )
    # Base URL override for the Gemini API (tests and the demo point it at a local emulator).
    gemini_base_url: str | None = None
    # Model: a tier of the price catalog, or an explicit model name (must be priced in the catalog).
    vision_tier: Literal["lite", "standard"] = "standard"
    vision_model: str | None = None
    vision_timeout_seconds: float = Field(default=20.0, gt=0, le=300)
    vision_max_output_tokens: int = Field(default=300, ge=16, le=8192)
    # Longest side of the image sent to the model (Gemini bills images per 768x768 tile).
    vision_max_image_side: int = Field(default=768, ge=64, le=4096)
    # Kept frames waiting for the model per stream; when full, the oldest is replaced by the newest.
    vision_queue_size: int = Field(default=1, ge=1, le=64)
    # Vision calls in flight per process (all streams).
    vision_max_concurrency: int = Field(default=4, ge=1, le=256)
    # Largest share of those slots one tenant may hold (at least one slot).
    vision_tenant_share: float = Field(default=0.5, gt=0, le=1)
    # Circuit breaker: after this many consecutive failed calls, the model is not called for the cooldown
    # (kept frames get the labelled offline analysis); then one trial call decides.
    vision_breaker_failures: int = Field(default=5, ge=1, le=1000)
    vision_breaker_cooldown_s: float = Field(default=30.0, gt=0, le=3600)

    # --- context store ---
    context_size: int = Field(default=5, ge=1, le=50)
    context_ttl_seconds: int = Field(default=1800, ge=1, le=7 * 24 * 3600)

    # Responses buffered per stream before the service stops reading frames (flow control).
    stream_buffer: int = Field(default=256, ge=8, le=100_000)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.large_change_area < self.min_change_area:
            raise ValueError("LARGE_CHANGE_AREA must be >= MIN_CHANGE_AREA")
        return self

    def dedup_config(self) -> DedupConfig:
        return DedupConfig(
            phash_threshold=self.phash_threshold,
            pixel_diff_threshold=self.pixel_diff_threshold,
            min_change_area=self.min_change_area,
            large_change_area=self.large_change_area,
            settle_ms=self.settle_ms,
            fast_settle_ms=self.fast_settle_ms,
            max_stale_ms=self.max_stale_ms,
            max_stale_speaking_ms=self.max_stale_speaking_ms,
            volatile_min_events=self.volatile_min_events,
            volatile_event_spacing_ms=self.volatile_event_spacing_ms,
            volatile_gap_ms=self.volatile_gap_ms,
            max_volatile_area=self.max_volatile_area,
            volatile_dilate=self.volatile_dilate,
            thumb_long_side=self.thumb_long_side,
            tile_size=self.tile_size,
            detail_diff_threshold=self.detail_diff_threshold,
            min_detail_pixels=self.min_detail_pixels,
            min_detail_motion=self.min_detail_motion,
            pointer_max_side=self.pointer_max_side,
        )

    def api_key(self) -> str | None:
        return self.gemini_api_key.get_secret_value() if self.gemini_api_key else None
