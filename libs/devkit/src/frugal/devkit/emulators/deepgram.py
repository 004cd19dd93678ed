"""Local emulator of Deepgram's speech-to-text API (`/v1/listen`: live websocket and pre-recorded POST).

Speaks the real wire format, so tests drive `livekit-plugins-deepgram` pointed at it::

    async with DeepgramEmulator() as emu:
        emu.script(DeepgramReply(transcript="how much does the business plan cost"))
        stt = deepgram.STT(api_key="test-key", base_url=emu.base_url)

- Auth: `Authorization: Token <key>`; a bad key fails the websocket handshake (or the POST) with 401.
- Live (`GET /v1/listen?model=..&encoding=linear16&sample_rate=..&channels=..` upgraded to a websocket):
  binary frames are audio; text frames are `{"type": "KeepAlive" | "Finalize" | "CloseStream"}`.
  Replies are JSON text frames: `{"type": "SpeechStarted", ...}`, `{"type": "Results", channel: {alternatives:
  [{transcript, confidence, words}]}, is_final, speech_final, from_finalize, start, duration, metadata:
  {request_id, model_info, model_uuid}}`, and on CloseStream `{"type": "Metadata", request_id, duration,
  channels, ...}` followed by a normal close.
- Pre-recorded (`POST /v1/listen?...`, body = audio): `{metadata: {request_id, duration, channels, models},
  results: {channels: [{alternatives: [{transcript, confidence, words}]}]}}`.

The emulator does not recognise speech: each connection (or POST) consumes the next scripted reply, whose
transcript is sent as one final result when the client asks for it (`Finalize` or `CloseStream`), or once
`after_audio_s` seconds of audio arrived when that is set.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from frugal.devkit.emulators._server import HttpEmulator

BYTES_PER_SAMPLE = 2  # linear16


@dataclass
class DeepgramRequest:
    """One connection (live) or POST (pre-recorded) the emulator received. Live ones fill in as audio arrives."""

    mode: str  # "live" | "prerecorded"
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    audio: bytearray = field(default_factory=bytearray)
    control: list[str] = field(default_factory=list)  # "KeepAlive", "Finalize", "CloseStream" in order
    # The same messages with the audio seconds received when each arrived.
    control_at: list[tuple[str, float]] = field(default_factory=list)
    results_sent: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False

    @property
    def api_key(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return auth[6:] if auth.lower().startswith("token ") else None

    @property
    def sample_rate(self) -> int:
        return int(self.query.get("sample_rate", "16000"))

    @property
    def channels(self) -> int:
        return int(self.query.get("channels", "1"))

    @property
    def audio_seconds(self) -> float:
        return len(self.audio) / (BYTES_PER_SAMPLE * self.sample_rate * self.channels)


@dataclass(frozen=True)
class DeepgramReply:
    """One scripted reply (one connection or POST); unset fields take the emulator's defaults."""

    transcript: str = ""
    confidence: float = 0.98
    status: int = 200  # != 200: the handshake / POST fails with this status and `err_msg`
    err_msg: str | None = None
    latency_s: float | None = None  # before the handshake / the reply
    after_audio_s: float | None = None  # send the final result once this much audio arrived (live)


class DeepgramEmulator(HttpEmulator[DeepgramReply, DeepgramRequest]):
    """aiohttp server on 127.0.0.1 (port 0 by default). Async context manager, or start()/aclose()."""

    def __init__(
        self,
        *,
        api_keys: tuple[str, ...] | None = None,
        latency_s: float = 0.0,
        default_transcript: str = "",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        self.api_keys = api_keys  # None: any non-empty key is accepted
        self.latency_s = latency_s
        self.default_transcript = default_transcript

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/listen", self._live)
        app.router.add_post("/v1/listen", self._prerecorded)

    @property
    def base_url(self) -> str:
        """What the plugin takes as `base_url` (the full listen endpoint; it switches http->ws itself)."""
        return f"{self.origin}/v1/listen"

    def fail_next(self, status: int, times: int = 1, err_msg: str | None = None) -> None:
        self.script(*[DeepgramReply(status=status, err_msg=err_msg) for _ in range(times)])

    # -- billing counters: Deepgram bills audio duration received, KeepAlive and silence not sent are free --
    @property
    def billed_audio_seconds(self) -> float:
        """Audio seconds received over every connection and POST: what Deepgram would bill."""
        return sum(r.audio_seconds if r.mode == "live" else _wav_seconds(bytes(r.audio)) for r in self.requests)

    @property
    def keepalives(self) -> int:
        """KeepAlive messages received (not billed)."""
        return sum(r.control.count("KeepAlive") for r in self.requests)

    # -- wire format -------------------------------------------------------------------------------
    def _key_ok(self, key: str | None) -> bool:
        return bool(key) and (self.api_keys is None or key in self.api_keys)

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        code = {400: "Bad Request", 401: "INVALID_AUTH", 402: "ASR_PAYMENT_REQUIRED", 429: "TOO_MANY_REQUESTS"}
        return web.json_response({"err_code": code.get(status, "INTERNAL_SERVER_ERROR"), "err_msg": message,
                                  "request_id": str(uuid.uuid4())}, status=status,
                                 headers={"dg-request-id": str(uuid.uuid4())})

    def _record(self, mode: str, request: web.Request) -> DeepgramRequest:
        req = DeepgramRequest(mode=mode, path=request.path, query=dict(request.query),
                              headers={k.lower(): v for k, v in request.headers.items()})
        self.requests.append(req)
        return req

    async def _admit(self, req: DeepgramRequest) -> tuple[DeepgramReply, web.Response | None]:
        reply = self._next_reply(DeepgramReply(transcript=self.default_transcript))
        latency = self.latency_s if reply.latency_s is None else reply.latency_s
        if latency > 0:
            await asyncio.sleep(latency)
        if not self._key_ok(req.api_key):
            return reply, self._error(401, "Invalid credentials.")
        if reply.status != 200:
            return reply, self._error(reply.status, reply.err_msg or f"emulated error {reply.status}")
        try:
            if req.sample_rate <= 0 or req.channels <= 0:
                raise ValueError
        except ValueError:
            return reply, self._error(400, "sample_rate and channels must be positive integers")
        if req.mode == "live" and req.query.get("encoding", "linear16") != "linear16":
            return reply, self._error(400, "the emulator only accepts encoding=linear16")
        return reply, None

    @staticmethod
    def _alternative(transcript: str, confidence: float, start: float, duration: float) -> dict[str, Any]:
        words = transcript.split()
        step = duration / max(len(words), 1)
        return {
            "transcript": transcript,
            "confidence": confidence,
            "words": [{"word": w.strip(".,?!").lower(), "punctuated_word": w, "start": round(start + i * step, 3),
                       "end": round(start + (i + 1) * step, 3), "confidence": confidence}
                      for i, w in enumerate(words)],
        }

    async def _live(self, request: web.Request) -> web.StreamResponse:
        req = self._record("live", request)
        reply, failure = await self._admit(req)
        if failure is not None:
            req.closed = True
            return failure
        request_id = str(uuid.uuid4())
        ws = web.WebSocketResponse()
        ws.headers["dg-request-id"] = request_id
        await ws.prepare(request)
        model = req.query.get("model", "nova-3")
        vad_events = req.query.get("vad_events") == "true"
        pending = bool(reply.transcript)
        sent_until = 0.0

        async def send_final(from_finalize: bool) -> None:
            nonlocal pending, sent_until
            total = req.audio_seconds
            if vad_events:
                await ws.send_json({"type": "SpeechStarted", "channel": [0], "timestamp": round(sent_until, 3)})
            result = {
                "type": "Results", "channel_index": [0, 1], "duration": round(total - sent_until, 3),
                "start": round(sent_until, 3), "is_final": True, "speech_final": True,
                "from_finalize": from_finalize,
                "channel": {"alternatives": [self._alternative(reply.transcript, reply.confidence, sent_until,
                                                               total - sent_until)]},
                "metadata": {"request_id": request_id, "model_uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, model)),
                             "model_info": {"name": model, "version": "emulated", "arch": model}},
            }
            await ws.send_json(result)
            req.results_sent.append(result)
            pending = False
            sent_until = total

        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                req.audio.extend(msg.data)
                if pending and reply.after_audio_s is not None and req.audio_seconds >= reply.after_audio_s:
                    await send_final(False)
            elif msg.type == WSMsgType.TEXT:
                try:
                    kind = json.loads(msg.data).get("type")
                except (ValueError, AttributeError):
                    await ws.close(code=1008, message=b"invalid control message")
                    break
                req.control.append(str(kind))
                req.control_at.append((str(kind), req.audio_seconds))
                if kind == "Finalize" and pending:
                    await send_final(True)
                elif kind == "CloseStream":
                    if pending:
                        await send_final(True)
                    await ws.send_json({"type": "Metadata", "transaction_key": "deprecated", "request_id": request_id,
                                        "sha256": "", "created": "", "duration": round(req.audio_seconds, 3),
                                        "channels": req.channels})
                    await ws.close()
                    break
            else:
                break
        req.closed = True
        return ws

    async def _prerecorded(self, request: web.Request) -> web.StreamResponse:
        req = self._record("prerecorded", request)
        req.audio.extend(await request.read())
        reply, failure = await self._admit(req)
        if failure is not None:
            return failure
        req.closed = True
        duration = _wav_seconds(bytes(req.audio))
        model = req.query.get("model", "nova-3")
        request_id = str(uuid.uuid4())
        return web.json_response({
            "metadata": {"request_id": request_id, "duration": duration, "channels": 1, "models": [model]},
            "results": {"channels": [{"alternatives": [self._alternative(reply.transcript, reply.confidence, 0.0,
                                                                          duration)]}]},
        }, headers={"dg-request-id": request_id})


def _wav_seconds(data: bytes) -> float:
    """Duration of a PCM WAV body (what the plugin POSTs); 0.0 when it is not one."""
    if len(data) < 44 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return 0.0
    pos, rate, block, size = 12, 0, 0, 0
    while pos + 8 <= len(data):
        cid, clen = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if cid == b"fmt ":
            rate = int.from_bytes(data[pos + 12:pos + 16], "little")
            block = int.from_bytes(data[pos + 20:pos + 22], "little")
        elif cid == b"data":
            size = min(clen, len(data) - pos - 8)
            break
        pos += 8 + clen + (clen & 1)
    return round(size / (rate * block), 3) if rate and block else 0.0
