"""Replays a recorded session through livekit-agents' own `AgentSession`, with no LiveKit server.

The session is the one a room gets (same VAD, STT/TTS, router-backed LLM, cost meter, screen sampler);
only its I/O differs: audio comes from WAV files on the session's timeline, text turns go through
`AgentSession.run(user_input=...)`, the agent's speech plays into a simulated sink, and screen frames come
from a video file or a frame folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from livekit import rtc
from livekit.agents import UserInputTranscribedEvent, UserStateChangedEvent, vad
from livekit.agents.voice import io
from livekit.agents.voice.run_result import RunResult

from frugal.api.vision.v1 import vision_pb2
from frugal.common.cost_events import CostEvent, CostEventProducer
from frugal.common.pricing import default_catalog
from frugal.common.redis_client import create_redis
from frugal.common.session_cost import SessionCost
from frugal.gateway.agent import SessionParts, build_session, load_vad
from frugal.gateway.clients import MeshClients, ResolvedTenant
from frugal.gateway.config import Settings
from frugal.gateway.replay.media import read_wav, screen_frames
from frugal.gateway.replay.spec import SessionSpec, TurnSpec
from frugal.gateway.router_llm import TurnReport
from frugal.gateway.screen import FrameThrottle, StreamStats, TrackSampler, VisionFrameStreamer
from frugal.gateway.speech import OfflineSTT, ProviderLabel

log = logging.getLogger(__name__)

SCREEN_TRACK_ID = "replay-screen"
TRAILING_SILENCE_S = 1.2


class ReplayClock:
    """Session time in seconds; runs `speed` times faster than the wall clock."""

    def __init__(self, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._t0 = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self._t0) * self.speed

    async def sleep_until(self, t: float) -> None:
        delay = (t - self.now()) / self.speed
        if delay > 0:
            await asyncio.sleep(delay)


class ReplayAudioInput(io.AudioInput):
    """The session's microphone: frames pushed by the replay, in real time."""

    def __init__(self) -> None:
        super().__init__(label="replay-wav")
        self._queue: asyncio.Queue[rtc.AudioFrame] = asyncio.Queue()

    def push(self, frame: rtc.AudioFrame) -> None:
        self._queue.put_nowait(frame)

    async def __anext__(self) -> rtc.AudioFrame:
        return await self._queue.get()


class SimulatedAudioOutput(io.AudioOutput):
    """The agent's speaker: takes the synthesised audio and 'plays' it in duration / speed seconds."""

    def __init__(self, speed: float = 1.0, sample_rate: int | None = None) -> None:
        super().__init__(label="replay-speaker", capabilities=io.AudioOutputCapabilities(pause=False),
                         sample_rate=sample_rate)
        self.speed = speed
        self.played_seconds = 0.0
        self._pending = 0.0
        self._started = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._interrupt = asyncio.Event()

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if not self._started:
            self._started = True
            self._interrupt.clear()
            self.on_playback_started(created_at=time.time())
        self._pending += frame.duration

    def flush(self) -> None:
        super().flush()
        if not self._started:
            return
        duration, self._pending, self._started = self._pending, 0.0, False
        task = asyncio.create_task(self._play(duration), name="replay-playout")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _play(self, duration: float) -> None:
        interrupted = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._interrupt.wait(), duration / self.speed)
            interrupted = True
        self.played_seconds += duration
        self.on_playback_finished(playback_position=duration, interrupted=interrupted)

    def clear_buffer(self) -> None:
        self._interrupt.set()
        if self._started:
            self._pending, self._started = 0.0, False
            self.on_playback_finished(playback_position=0.0, interrupted=True)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass
class ReplayTurn:
    index: int
    spec: TurnSpec
    heard: str = ""
    report: TurnReport | None = None
    note: str = ""

    @property
    def answered(self) -> bool:
        return self.report is not None


@dataclass
class ReplayResult:
    title: str
    session_id: str
    tenant: ResolvedTenant
    stt: ProviderLabel
    tts: ProviderLabel
    turns: list[ReplayTurn] = field(default_factory=list)
    vision: StreamStats | None = None
    frames_read: int = 0
    frames_throttled: int = 0
    speech_events: list[CostEvent] = field(default_factory=list)
    welcome: str | None = None
    wall_seconds: float = 0.0
    session_cost: SessionCost | None = None  # the whole-session cost recorded at the session's end
    chat: list[str] = field(default_factory=list)  # what the agent posted to the (simulated) room chat

    @property
    def reports(self) -> list[TurnReport]:
        return [t.report for t in self.turns if t.report is not None]

    @property
    def llm_cost_usd(self) -> float:
        return sum(r.cost_usd for r in self.reports)

    @property
    def llm_event_ids(self) -> list[str]:
        return [eid for r in self.reports for eid in r.cost_event_ids]


class ReplayObserver:
    """What the replay tells as it goes; the default prints lines. `make demo` subclasses it."""

    def __init__(self, write: Callable[[str], None] = print) -> None:
        self.write = write

    def started(self, spec: SessionSpec, parts: SessionParts) -> None:
        self.write(f"replaying {spec.title!r}: tenant {parts.tenant.tenant_id}, session {parts.session_id}")
        for note in parts.notes:
            self.write(f"  {note}")

    def turn_started(self, turn: ReplayTurn) -> None:
        how = "WAV through VAD" if turn.spec.kind == "audio" else "text"
        self.write(f"[t={turn.spec.at:5.1f}s] user ({how}): {turn.spec.said}")

    def turn_done(self, turn: ReplayTurn) -> None:
        r = turn.report
        if r is None:
            self.write(f"    (no answer: {turn.note})")
            return
        if not r.ok:
            self.write(f"    agent apologised ({r.error_code}): {r.answer}")
            return
        offline = " offline" if r.offline else ""
        self.write(f"    {r.tier} {r.model}{offline}: ${r.cost_usd:.6f}  \u2192 {r.answer[:100]}")
        if r.chat_only_chars:
            self.write(f"    (long answer: spoken in short, {r.chat_only_chars} more characters posted to the "
                       "room chat)")

    def vision_event(self, track_id: str, resp: vision_pb2.StreamFramesResponse) -> None:
        pass

    def finished(self, result: ReplayResult) -> None:
        v = result.vision
        if v is not None:
            self.write(f"screen: {result.frames_read} frames read, {result.frames_throttled} throttled, {v.sent} sent, "
                       f"{v.kept} kept, {v.skipped} skipped, {v.analyses} analysed")
        self.write(f"{len(result.reports)} answered turns, LLM cost ${result.llm_cost_usd:.6f}")


async def run_replay(
    spec: SessionSpec,
    settings: Settings,
    *,
    clients: MeshClients | None = None,
    vad_model: vad.VAD | None = None,
    speed: float = 1.0,
    playout_speed: float = 20.0,
    observer: ReplayObserver | None = None,
    turn_timeout_s: float = 60.0,
    emit_costs: bool = True,
) -> ReplayResult:
    """Runs the recorded session; raises `TenantRejected` when its room belongs to no known tenant."""
    observer = observer or ReplayObserver()
    own_clients = clients is None
    clients = clients or MeshClients(settings)
    redis = create_redis(settings.cost_redis_url) if emit_costs else None
    producer = CostEventProducer.from_settings(settings, redis) if redis is not None else None
    session_id = f"replay-{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    # Outside a LiveKit job there is no shared HTTP session for the provider plugins: with real keys the replay
    # brings its own (offline stand-ins need none).
    http: aiohttp.ClientSession | None = (aiohttp.ClientSession()
                                          if settings.deepgram_api_key or settings.elevenlabs_api_key else None)
    try:
        tenant = await clients.resolve_tenant(spec.room, session_id)
        vad_used = vad_model if vad_model is not None else await asyncio.to_thread(load_vad)
        parts = build_session(settings, clients, tenant, session_id, vad_model=vad_used, producer=producer,
                              catalog=default_catalog(settings.price_catalog_path), user_away_timeout=None,
                              http_session=http)
        result = ReplayResult(title=spec.title, session_id=session_id, tenant=tenant, stt=parts.stt_label,
                              tts=parts.tts_label, welcome=parts.agent.welcome)

        async def post_to_chat(text: str) -> None:  # the replay's room chat: kept, as its audio output is
            result.chat.append(text)

        parts.long_answers.post = post_to_chat
        try:
            await _run(spec, settings, clients, parts, result, observer, speed, playout_speed, turn_timeout_s)
        finally:
            await parts.aclose()
            result.speech_events = list(parts.meter.events)
            result.session_cost = parts.cost
        result.wall_seconds = time.monotonic() - started
        observer.finished(result)
        return result
    finally:
        if http is not None:
            await http.close()
        if producer is not None:
            await producer.aclose()
        if redis is not None:
            await redis.aclose()
        if own_clients:
            await clients.aclose()


async def _run(
    spec: SessionSpec,
    settings: Settings,
    clients: MeshClients,
    parts: SessionParts,
    result: ReplayResult,
    observer: ReplayObserver,
    speed: float,
    playout_speed: float,
    turn_timeout_s: float,
) -> None:
    session = parts.session
    mic = ReplayAudioInput()
    # The agent's (synthesised) speech is 'played' faster than real time: nobody listens in a replay.
    speaker = SimulatedAudioOutput(speed=playout_speed)
    session.input.audio = mic
    session.output.audio = speaker

    throttle = FrameThrottle(settings.active_fps, settings.idle_fps)
    streamer: VisionFrameStreamer | None = None
    sampler: TrackSampler | None = None
    clock = ReplayClock(speed)
    if spec.screen is not None:
        streamer = VisionFrameStreamer(
            clients.vision, tenant_id=parts.tenant.tenant_id, session_id=parts.session_id, track_id=SCREEN_TRACK_ID,
            backoff_min_s=settings.vision_reconnect_min_s, backoff_max_s=settings.vision_reconnect_max_s,
            on_event=observer.vision_event,
        )
        sampler = TrackSampler(streamer, throttle, max_width=settings.max_frame_width, clock=clock.now)

    heard: list[str] = []

    def on_user_state(ev: UserStateChangedEvent) -> None:
        throttle.set_speaking(ev.new_state == "speaking")

    def on_transcribed(ev: UserInputTranscribedEvent) -> None:
        if ev.is_final and ev.transcript:
            heard.append(ev.transcript)

    session.on("user_state_changed", on_user_state)
    session.on("user_input_transcribed", on_transcribed)
    observer.started(spec, parts)
    screen_task: asyncio.Task[None] | None = None
    try:
        await session.start(parts.agent)
        await session.wait_for_idle()  # the welcome message
        clock = ReplayClock(speed)
        if sampler is not None and streamer is not None and spec.screen is not None:
            sampler.clock = clock.now
            streamer.start()
            screen_task = asyncio.create_task(_play_screen(spec, sampler, clock), name="replay-screen")
        for index, turn_spec in enumerate(spec.turns):
            await clock.sleep_until(turn_spec.at)
            turn = ReplayTurn(index=index, spec=turn_spec)
            observer.turn_started(turn)
            before = len(parts.llm.reports)
            if turn_spec.audio is not None:
                await _spoken_turn(parts, mic, turn_spec, turn_timeout_s, before)
                turn.heard = heard[-1] if heard else ""
            else:
                await _typed_turn(parts, throttle, clock, turn_spec, turn_timeout_s)
                turn.heard = turn_spec.said
            new = parts.llm.reports[before:]
            if new:
                turn.report = new[-1]
            else:
                turn.note = "no turn detected (VAD heard no speech, or STT returned no text)"
            result.turns.append(turn)
            observer.turn_done(turn)
        if screen_task is not None:
            # The conversation is over: frames after it are not replayed.
            screen_task.cancel()
            await asyncio.gather(screen_task, return_exceptions=True)
        if streamer is not None:
            await streamer.finish(within_s=20.0)
            result.vision = streamer.stats
        if sampler is not None:
            result.frames_read, result.frames_throttled = sampler.received, sampler.throttled
    finally:
        if screen_task is not None and not screen_task.done():
            screen_task.cancel()
            await asyncio.gather(screen_task, return_exceptions=True)
        if streamer is not None:
            await streamer.aclose()
        session.off("user_state_changed", on_user_state)
        session.off("user_input_transcribed", on_transcribed)
        await session.aclose()
        await speaker.aclose()


async def _play_screen(spec: SessionSpec, sampler: TrackSampler, clock: ReplayClock) -> None:
    assert spec.screen is not None
    frames = screen_frames(spec.screen)
    while True:
        # Decoding is CPU work: keep it off the event loop so VAD and the session stay responsive.
        timed = await asyncio.to_thread(next, frames, None)
        if timed is None:
            # The recording ended: a frame the rate cap held is its last one (the screen as it stayed), sent
            # at its slot as a live track's would be (TrackSampler.consume does the same).
            due = sampler.due()
            if due is not None:
                await clock.sleep_until(due)
                sampler.flush(max(due, clock.now()) + 1e-6)
            return
        await clock.sleep_until(timed.at)
        sampler.push(timed.frame, at=timed.at, timestamp_ms=int(timed.at * 1000))


async def _typed_turn(parts: SessionParts, throttle: FrameThrottle, clock: ReplayClock, turn: TurnSpec,
                      timeout_s: float) -> None:
    if turn.speak_seconds > 0:
        # The recording says the user spoke for this long: the screen sampler sees a speaking user.
        throttle.set_speaking(True)
        await clock.sleep_until(turn.at + turn.speak_seconds)
        throttle.set_speaking(False)
    run: RunResult[None] = parts.session.run(user_input=turn.said)
    await asyncio.wait_for(_await_run(run), timeout_s)


async def _await_run(run: RunResult[None]) -> None:
    await run


async def _spoken_turn(parts: SessionParts, mic: ReplayAudioInput, turn: TurnSpec, timeout_s: float,
                       reports_before: int) -> None:
    assert turn.audio is not None
    pcm = await asyncio.to_thread(read_wav, turn.audio)
    if isinstance(parts.session.stt, OfflineSTT):
        if turn.transcript:
            parts.feed.push(turn.transcript)
        else:
            log.warning("turn at %.1fs has audio but no transcript: the offline STT has nothing to hand out", turn.at)
    # Real time: VAD and endpointing measure silence on the wall clock.
    t0 = time.monotonic()
    pushed = 0.0
    for frame in pcm.frames(20):
        mic.push(frame)
        pushed += frame.duration
        await asyncio.sleep(max(0.0, t0 + pushed - time.monotonic()))
    silence_frames = int(TRAILING_SILENCE_S / 0.02)
    quiet = rtc.AudioFrame(bytes(2 * pcm.sample_rate // 50), pcm.sample_rate, 1, pcm.sample_rate // 50)
    for _ in range(silence_frames):
        mic.push(quiet)
        pushed += quiet.duration
        await asyncio.sleep(max(0.0, t0 + pushed - time.monotonic()))
    deadline = time.monotonic() + timeout_s
    while len(parts.llm.reports) <= reports_before and time.monotonic() < deadline:
        # keep the microphone alive with silence while the turn is committed and answered
        mic.push(quiet)
        await asyncio.sleep(0.02)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(parts.session.wait_for_idle(), max(deadline - time.monotonic(), 0.1))
