"""Local emulator of ElevenLabs text-to-speech (multi-stream-input websocket and the HTTP `/stream` endpoint).

Speaks the real wire format, so tests drive `livekit-plugins-elevenlabs` pointed at it::

    async with ElevenLabsEmulator() as emu:
        tts = elevenlabs.TTS(api_key="test-key", base_url=emu.base_url, encoding="pcm_24000")

- Auth: header `xi-api-key`; a bad key fails the websocket handshake (or the POST) with 401.
- `GET /v1/text-to-speech/{voice_id}/multi-stream-input?model_id=..&output_format=..&sync_alignment=..`
  (websocket; what `TTS.stream()` uses): client JSON frames `{"text": " ", "voice_settings", "context_id"}`
  (context init), `{"text": "...", "context_id", "flush"?}`, `{"context_id", "close_context": true}`,
  `{"close_socket": true}`. Server JSON frames `{"audio": base64, "normalizedAlignment": {chars,
  charStartTimesMs, charDurationsMs}, "alignment": {...}, "contextId"}` when a context is flushed or closed,
  then `{"isFinal": true, "contextId"}` once it is closed; `{"error": "...", "contextId"}` for in-band errors.
- `POST /v1/text-to-speech/{voice_id}/stream?output_format=..` with JSON `{text, model_id, voice_settings,
  ...}` (what `TTS.synthesize()` uses): chunked `audio/mpeg` or `audio/pcm` body.

Audio: by default a quiet sine tone as long as the text would take to say (`seconds_per_char`), in the
requested `output_format`: `pcm_<rate>` (16-bit little-endian mono) or `mp3_<rate>_<kbps>` (encoded with PyAV,
which livekit-agents already depends on). A scripted reply can fix the PCM instead.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from frugal.devkit.emulators._server import HttpEmulator

SECONDS_PER_CHAR = 0.06
CHUNK_SECONDS = 0.25  # audio frames/chunks are about this long


@dataclass
class ElevenLabsRequest:
    """One websocket connection or POST. Websocket ones fill in as messages arrive."""

    mode: str  # "websocket" | "http"
    path: str
    voice_id: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any] | None = None  # http: the JSON body
    messages: list[dict[str, Any]] = field(default_factory=list)  # websocket: client messages in order
    texts: dict[str, str] = field(default_factory=dict)  # context id -> text received ("" for http)
    audio_bytes_sent: int = 0
    closed: bool = False

    @property
    def api_key(self) -> str | None:
        return self.headers.get("xi-api-key")

    @property
    def output_format(self) -> str:
        return self.query.get("output_format", "mp3_44100_128")

    @property
    def model_id(self) -> str | None:
        return self.query.get("model_id") or (self.body or {}).get("model_id")

    @property
    def text(self) -> str:
        """All text received, contexts in order of creation."""
        return "".join(self.texts.values())


@dataclass(frozen=True)
class ElevenLabsReply:
    """One scripted reply (one connection or POST); unset fields take the emulator's defaults."""

    status: int = 200  # != 200: the handshake / POST fails with this status
    detail: str | None = None
    latency_s: float | None = None
    pcm: bytes | None = None  # 16-bit mono PCM at the requested rate, replacing the generated tone
    error: str | None = None  # websocket: in-band `{"error": ...}` for the first context instead of audio


def tone_pcm(seconds: float, sample_rate: int, freq: float = 220.0, amplitude: float = 0.2) -> bytes:
    n = max(int(seconds * sample_rate), 1)
    t = np.arange(n, dtype=np.float64) / sample_rate
    return (np.sin(2 * math.pi * freq * t) * amplitude * 32767).astype("<i2").tobytes()


def parse_output_format(fmt: str) -> tuple[str, int]:
    """`pcm_24000` -> ("pcm", 24000); `mp3_22050_32` -> ("mp3", 22050). ValueError otherwise."""
    parts = fmt.split("_")
    if len(parts) < 2 or parts[0] not in ("pcm", "mp3") or not parts[1].isdigit():
        raise ValueError(f"output_format {fmt!r} is not supported by the emulator (pcm_<rate> or mp3_<rate>_<kbps>)")
    return parts[0], int(parts[1])


def encode_mp3(pcm: bytes, sample_rate: int) -> bytes:
    import av  # livekit-agents' own dependency; only needed for mp3 output formats

    out = io.BytesIO()
    with av.open(out, mode="w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=sample_rate)
        stream.layout = "mono"
        samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def _alignment(text: str, seconds: float) -> dict[str, list[Any]]:
    step = int(seconds * 1000 / max(len(text), 1))
    return {"chars": list(text), "charStartTimesMs": [i * step for i in range(len(text))],
            "charDurationsMs": [step] * len(text)}


class ElevenLabsEmulator(HttpEmulator[ElevenLabsReply, ElevenLabsRequest]):
    """aiohttp server on 127.0.0.1 (port 0 by default). Async context manager, or start()/aclose()."""

    def __init__(
        self,
        *,
        api_keys: tuple[str, ...] | None = None,
        latency_s: float = 0.0,
        seconds_per_char: float = SECONDS_PER_CHAR,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        self.api_keys = api_keys  # None: any non-empty key is accepted
        self.latency_s = latency_s
        self.seconds_per_char = seconds_per_char

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/text-to-speech/{voice_id}/multi-stream-input", self._websocket)
        app.router.add_post("/v1/text-to-speech/{voice_id}/stream", self._http_stream)

    @property
    def base_url(self) -> str:
        """What the plugin takes as `base_url` (it appends `/text-to-speech/...` and switches http->ws)."""
        return f"{self.origin}/v1"

    def fail_next(self, status: int, times: int = 1, detail: str | None = None) -> None:
        self.script(*[ElevenLabsReply(status=status, detail=detail) for _ in range(times)])

    # -- billing counter: ElevenLabs bills the characters of the text it is sent to synthesise --
    @property
    def billed_characters(self) -> int:
        """Characters received for synthesis over every connection and POST that was served."""
        return sum(len(r.text) for r in self.requests if r.closed)

    def audio_for(self, text: str, sample_rate: int, reply: ElevenLabsReply) -> bytes:
        """The PCM the emulator speaks for `text` (what tests compare received frames with)."""
        if reply.pcm is not None:
            return reply.pcm
        return tone_pcm(self.seconds_per_char * len(text.strip()), sample_rate)

    # -- wire format -------------------------------------------------------------------------------
    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        return web.json_response({"detail": {"status": "invalid_api_key" if status == 401 else "error",
                                             "message": message}}, status=status,
                                 headers={"x-trace-id": uuid.uuid4().hex})

    def _record(self, mode: str, request: web.Request) -> ElevenLabsRequest:
        req = ElevenLabsRequest(mode=mode, path=request.path, voice_id=request.match_info["voice_id"],
                                query=dict(request.query), headers={k.lower(): v for k, v in request.headers.items()})
        self.requests.append(req)
        return req

    async def _admit(self, req: ElevenLabsRequest) -> tuple[ElevenLabsReply, web.Response | None]:
        reply = self._next_reply(ElevenLabsReply())
        latency = self.latency_s if reply.latency_s is None else reply.latency_s
        if latency > 0:
            await asyncio.sleep(latency)
        key = req.api_key
        if not key or (self.api_keys is not None and key not in self.api_keys):
            return reply, self._error(401, "Invalid API key")
        if reply.status != 200:
            return reply, self._error(reply.status, reply.detail or f"emulated error {reply.status}")
        try:
            parse_output_format(req.output_format)
        except ValueError as err:
            return reply, self._error(400, str(err))
        return reply, None

    def _encode(self, pcm: bytes, fmt: str) -> bytes:
        kind, rate = parse_output_format(fmt)
        return pcm if kind == "pcm" else encode_mp3(pcm, rate)

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        req = self._record("websocket", request)
        reply, failure = await self._admit(req)
        if failure is not None:
            req.closed = True
            return failure
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        fmt = req.output_format
        _, rate = parse_output_format(fmt)
        pending: dict[str, str] = {}  # context -> text not yet spoken
        error_left = reply.error

        async def speak(ctx: str) -> None:
            nonlocal error_left
            text = pending.pop(ctx, "")
            if not text.strip():
                return
            if error_left is not None:
                await ws.send_json({"error": error_left, "message": error_left, "contextId": ctx})
                error_left = None
                return
            pcm = self.audio_for(text, rate, reply)
            chunk = max(2 * int(CHUNK_SECONDS * rate), 2)
            pieces = [pcm[i:i + chunk] for i in range(0, len(pcm), chunk)] if fmt.startswith("pcm") else [
                self._encode(pcm, fmt)]
            seconds = len(pcm) / (2 * rate)
            for i, piece in enumerate(pieces):
                msg: dict[str, Any] = {"audio": base64.b64encode(piece).decode(), "contextId": ctx}
                if i == 0:
                    msg["normalizedAlignment"] = msg["alignment"] = _alignment(text, seconds)
                await ws.send_json(msg)
                req.audio_bytes_sent += len(piece)

        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            try:
                data = json.loads(msg.data)
                if not isinstance(data, dict):
                    raise ValueError
            except ValueError:
                await ws.send_json({"error": "invalid_message", "message": "expected a JSON object"})
                continue
            req.messages.append(data)
            if data.get("close_socket"):
                break
            ctx = str(data.get("context_id") or data.get("contextId") or "default")
            text = data.get("text")
            if isinstance(text, str):
                is_init = ctx not in req.texts
                req.texts.setdefault(ctx, "")
                if not (is_init and text == " "):  # the init packet's single space is not spoken text
                    req.texts[ctx] += text
                    pending[ctx] = pending.get(ctx, "") + text
                if data.get("flush"):
                    await speak(ctx)
            if data.get("close_context"):
                await speak(ctx)
                await ws.send_json({"isFinal": True, "contextId": ctx})
        await ws.close()
        req.closed = True
        return ws

    async def _http_stream(self, request: web.Request) -> web.StreamResponse:
        req = self._record("http", request)
        try:
            body = await request.json()
            if not isinstance(body, dict) or not isinstance(body.get("text"), str):
                raise ValueError("text: field required")
        except ValueError as err:
            return self._error(400, str(err))
        req.body = body
        req.texts[""] = body["text"]
        reply, failure = await self._admit(req)
        if failure is not None:
            return failure
        fmt = req.output_format
        kind, rate = parse_output_format(fmt)
        data = self._encode(self.audio_for(body["text"], rate, reply), fmt)
        resp = web.StreamResponse(headers={"Content-Type": "audio/mpeg" if kind == "mp3" else "audio/pcm",
                                           "request-id": uuid.uuid4().hex})
        await resp.prepare(request)
        chunk = 2 * int(CHUNK_SECONDS * rate)
        for i in range(0, len(data), chunk):
            await resp.write(data[i:i + chunk])
            req.audio_bytes_sent += len(data[i:i + chunk])
        await resp.write_eof()
        req.closed = True
        return resp
