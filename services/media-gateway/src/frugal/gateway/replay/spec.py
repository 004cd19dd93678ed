"""The recorded-session format: `session.toml` in a directory, media files beside it.

    title = "..."
    room = "tenant_demo_onboarding"       # resolved through billing, as a live room would be
    [screen]                               # optional
    video = "screen.webm"                  # a video file, or
    frames = "frames"                      # a folder of PNG/JPEG frames, captured at `fps`
    fps = 4.0
    start = 0.0                            # where on the timeline the share starts (seconds)
    [[turns]]
    at = 1.0                               # when the user starts talking (seconds)
    text = "What is Acme Cloud?"           # a typed/transcribed turn ...
    speak_seconds = 2.0                    # ... and how long the user spoke it (speaking state)
    [[turns]]
    at = 9.0
    audio = "audio/pricing.wav"            # a spoken turn: the WAV goes through VAD and STT
    transcript = "How much is Pro?"        # what the offline STT stand-in hands out (no Deepgram key)
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path


class SessionFormatError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class TurnSpec:
    at: float
    text: str | None = None
    audio: Path | None = None
    transcript: str | None = None
    speak_seconds: float = 0.0
    note: str = ""

    @property
    def kind(self) -> str:
        return "audio" if self.audio is not None else "text"

    @property
    def said(self) -> str:
        return self.text if self.text is not None else (self.transcript or "")


@dataclass(frozen=True, slots=True)
class ScreenSpec:
    video: Path | None = None
    frames: Path | None = None
    fps: float = 4.0
    start: float = 0.0


@dataclass(frozen=True, slots=True)
class SessionSpec:
    root: Path
    title: str
    room: str
    turns: tuple[TurnSpec, ...]
    screen: ScreenSpec | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: str | Path) -> SessionSpec:
        root = Path(directory)
        path = root / "session.toml" if root.is_dir() else root
        root = path.parent
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SessionFormatError(f"{path}: no such file (a session directory holds session.toml)") from None
        except tomllib.TOMLDecodeError as err:
            raise SessionFormatError(f"{path}: {err}") from err
        room = data.get("room")
        if not isinstance(room, str) or not room:
            raise SessionFormatError(f"{path}: 'room' (tenant_{{tenantId}}_{{room}}) is required")
        turns: list[TurnSpec] = []
        for i, raw in enumerate(data.get("turns", [])):
            where = f"{path}: turns[{i}]"
            if not isinstance(raw, dict):
                raise SessionFormatError(f"{where}: must be a table")
            text, audio = raw.get("text"), raw.get("audio")
            if (text is None) == (audio is None):
                raise SessionFormatError(f"{where}: give exactly one of 'text' or 'audio'")
            audio_path = None
            if audio is not None:
                audio_path = root / str(audio)
                if not audio_path.is_file():
                    raise SessionFormatError(f"{where}: audio file {audio_path} not found")
            at = float(raw.get("at", turns[-1].at if turns else 0.0))
            if turns and at < turns[-1].at:
                raise SessionFormatError(f"{where}: 'at' ({at}) goes back in time")
            turns.append(TurnSpec(at=at, text=None if text is None else str(text), audio=audio_path,
                                  transcript=raw.get("transcript"), speak_seconds=float(raw.get("speak_seconds", 0.0)),
                                  note=str(raw.get("note", ""))))
        screen = None
        if isinstance(raw_screen := data.get("screen"), dict):
            video = raw_screen.get("video")
            frames = raw_screen.get("frames")
            if (video is None) == (frames is None):
                raise SessionFormatError(f"{path}: [screen] needs exactly one of 'video' or 'frames'")
            screen = ScreenSpec(video=root / video if video else None, frames=root / frames if frames else None,
                                fps=float(raw_screen.get("fps", 4.0)), start=float(raw_screen.get("start", 0.0)))
            media = screen.video or screen.frames
            assert media is not None
            if not media.exists():
                raise SessionFormatError(f"{path}: screen media {media} not found")
            if screen.fps <= 0:
                raise SessionFormatError(f"{path}: [screen] fps must be positive")
        if not turns:
            raise SessionFormatError(f"{path}: no turns")
        return cls(root=root, title=str(data.get("title", root.name)), room=room, turns=tuple(turns), screen=screen)
