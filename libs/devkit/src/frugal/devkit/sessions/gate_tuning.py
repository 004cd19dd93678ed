"""The STT gate's pre-roll, post-roll and release threshold, chosen held-out.

    uv run python bench/session/gate_tuning.py            # tune on the tuning seeds, evaluate on the others
    uv run python bench/session/gate_tuning.py --quick    # fewer seeds

(the bench script calls `main` here, with its media cache `bench/session/.media/`).

Protocol (nothing is fitted on what it is evaluated on):
- tuning set: the three session definitions re-synthesised with TUNING_SEEDS (other syllables, pitches and
  room noise than the recorded sessions); every measurement and choice below is made on it alone;
- evaluation: the recorded sessions (their own seeds) and the same definitions with FRESH_SEEDS, disjoint
  from both.

What is measured on the tuning set, per utterance, with Silero (the session's VAD model):
- onset delay: from the first word's start to the start of the first 32 ms window at or above the activation
  threshold (where the gate opens): what the pre-roll must cover;
- release lag: from the end of the last window that still counts as speech (at or above the release threshold
  while open) to the end of the last word, and the longest below-release stretch inside an utterance: what
  the post-roll must bridge.

The rule: for each candidate release threshold, pre-roll = the largest onset delay seen + MARGIN_S and
post-roll = the largest release lag or inner stretch seen + MARGIN_S (each rounded up to the 32 ms window);
of the candidates, the one that forwards the fewest seconds on the tuning set. The margin is two VAD windows
of slack beyond the worst case seen, against the tail of a distribution seen only a few dozen times.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from frugal.devkit.sessions.catalog import SESSIONS, SessionDef
from frugal.devkit.sessions.media import SpokenTurn, fingerprint, load_or_generate
from frugal.gateway.stt_gate import SAMPLE_RATE, WINDOW, GateConfig, SpeechProbability, SttGate, level_dbfs

WINDOW_S = WINDOW / SAMPLE_RATE
# Seed offsets (session.seed + 10_000 * k): tuning and fresh evaluation sets, disjoint from each other and
# from the recorded sessions (k = 0).
TUNING_SEEDS: tuple[int, ...] = tuple(range(1, 9))
FRESH_SEEDS: tuple[int, ...] = tuple(range(101, 109))
RELEASE_CANDIDATES: tuple[float, ...] = (0.35, 0.25, 0.15)  # 0.35: Silero's own neg_threshold (0.5 - 0.15)
MARGIN_S = 2 * WINDOW_S
ENERGY_CANDIDATES: tuple[float | None, ...] = (None, GateConfig().energy_onset_db)
# livekit-plugins-silero's defaults for the same model (prefix_padding_duration, min_silence_duration): the
# padding the agent's own VAD gives the speech it cuts; the gate never gives the STT less.
PRE_ROLL_FLOOR_S = 0.5
POST_ROLL_FLOOR_S = 0.55


def variant(session: SessionDef, k: int) -> SessionDef:
    return session if k == 0 else dataclasses.replace(session, seed=session.seed + 10_000 * k)


@dataclass(frozen=True)
class Track:
    session: SessionDef
    probs: np.ndarray  # Silero probability per 32 ms window
    levels: np.ndarray  # dBFS per window
    turns: list[SpokenTurn]

    @property
    def seconds(self) -> float:
        return len(self.probs) * WINDOW_S


def track(session: SessionDef, cache_dir: Path) -> Track:
    """The session's microphone track through Silero; probabilities cached beside the generated audio."""
    cache = cache_dir / f"{session.name}-{fingerprint(session)}.vad.npy"
    pcm, turns = load_or_generate(session, cache_dir)
    if cache.is_file():
        probs, levels = np.load(cache)
        return Track(session, probs, levels, turns)
    vad = SpeechProbability()
    probs_l, levels_l = [], []
    for window, p in vad.windows(pcm):
        probs_l.append(p)
        levels_l.append(level_dbfs(window.tobytes()))
    probs, levels = np.array(probs_l, dtype=np.float64), np.array(levels_l, dtype=np.float64)
    np.save(cache, np.stack([probs, levels]))
    return Track(session, probs, levels, turns)


def spans_of(t: Track, cfg: GateConfig) -> tuple[list[tuple[float, float]], float]:
    """The gate's forwarded spans (and seconds) on a track: the gate itself, fed the track's probabilities."""
    gate = SttGate(cfg)
    for p, level in zip(t.probs, t.levels, strict=True):
        gate.push(b"", WINDOW_S, float(p), float(level))
    return gate.stats.spans, gate.stats.forwarded_s


def words_lost(turns: list[SpokenTurn], spans: list[tuple[float, float]]) -> tuple[int, int]:
    """Words not wholly inside one forwarded span (the STT never heard all of them), and all words."""
    total = lost = 0
    for t in turns:
        for w in t.words:
            total += 1
            if not any(a - 1e-6 <= w.start and w.end <= b + 1e-6 for a, b in spans):
                lost += 1
    return lost, total


@dataclass(frozen=True)
class EdgeStats:
    onset_delays: list[float]  # per utterance, seconds (first word start -> gate opens)
    release_lags: list[float]  # per utterance: last speech window end -> last word end, or an inner stretch
    missed: int  # utterances the VAD never opened on (no window reached the activation threshold)


def indicators(t: Track, cfg: GateConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per window: would it open the gate, would it hold it open (the gate's own rule, its own noise floor)."""
    gate = SttGate(cfg)
    pairs = [gate.speech(float(p), float(level), WINDOW_S) for p, level in zip(t.probs, t.levels, strict=True)]
    return np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])


def edges(tracks: list[Track], cfg: GateConfig) -> EdgeStats:
    onsets: list[float] = []
    lags: list[float] = []
    missed = 0
    for t in tracks:
        opens, holds = indicators(t, cfg)
        for u in t.turns:
            if not u.words:
                continue
            start, end = u.words[0].start, u.words[-1].end
            first = int(start / WINDOW_S)
            last = min(int(math.ceil(end / WINDOW_S)), len(t.probs))
            seg = opens[first:last + int(2.0 / WINDOW_S)]  # the utterance and 2 s after (a late onset)
            above = np.nonzero(seg)[0]
            if not len(above):
                missed += 1
                continue
            opened = first + int(above[0])
            onsets.append(max(opened * WINDOW_S - start, 0.0))
            # Once open, windows at or above `release` count as speech: the longest stretch without one, up to
            # the last word's end, is what the post-roll must bridge.
            speech_end = (opened + 1) * WINDOW_S
            worst = 0.0
            for i in range(opened + 1, last):
                if holds[i]:
                    worst = max(worst, i * WINDOW_S - speech_end)
                    speech_end = (i + 1) * WINDOW_S
            lags.append(max(worst, end - speech_end, 0.0))
    return EdgeStats(onsets, lags, missed)


def _up(x: float) -> float:
    return round(math.ceil(round(x / WINDOW_S, 6)) * WINDOW_S, 3)


@dataclass(frozen=True)
class Choice:
    energy_onset_db: float | None
    release: float
    pre_roll_s: float
    post_roll_s: float
    stats: EdgeStats
    forwarded_s: float
    lost: int
    words: int

    def config(self) -> GateConfig:
        return GateConfig(release_threshold=self.release, pre_roll_s=self.pre_roll_s, post_roll_s=self.post_roll_s,
                          energy_onset_db=self.energy_onset_db)


def tune(tracks: list[Track]) -> list[Choice]:
    """One choice per candidate (level criterion on/off x release threshold; the rule of the module
    docstring), best first: fewest words lost on the tuning set, then fewest seconds forwarded."""
    out: list[Choice] = []
    for energy in ENERGY_CANDIDATES:
        for release in RELEASE_CANDIDATES:
            base = GateConfig(release_threshold=release, energy_onset_db=energy)
            st = edges(tracks, base)
            pre = max(_up(max(st.onset_delays) + MARGIN_S), PRE_ROLL_FLOOR_S)
            post = max(_up(max(st.release_lags) + MARGIN_S), POST_ROLL_FLOOR_S)
            cfg = dataclasses.replace(base, pre_roll_s=pre, post_roll_s=post)
            fwd = lost = words = 0.0
            for t in tracks:
                spans, f = spans_of(t, cfg)
                lo, n = words_lost(t.turns, spans)
                fwd, lost, words = fwd + f, lost + lo, words + n
            out.append(Choice(energy, release, pre, post, st, fwd, int(lost), int(words)))
    return sorted(out, key=lambda c: (c.lost, c.forwarded_s))


def evaluate(tracks: list[Track], cfg: GateConfig) -> list[tuple[str, int, int, float, float]]:
    """Per track: (label, words lost, words, forwarded s, track s)."""
    rows = []
    for t in tracks:
        spans, fwd = spans_of(t, cfg)
        lost, words = words_lost(t.turns, spans)
        rows.append((f"{t.session.name} (seed {t.session.seed})", lost, words, fwd, t.seconds))
    return rows


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs), q)) if xs else 0.0


def main(cache_dir: Path, argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="three tuning and three fresh seeds")
    args = p.parse_args(argv)
    tuning = TUNING_SEEDS[:3] if args.quick else TUNING_SEEDS
    fresh = FRESH_SEEDS[:3] if args.quick else FRESH_SEEDS
    t0 = time.perf_counter()
    tune_tracks = [track(variant(s, k), cache_dir) for k in tuning for s in SESSIONS.values()]
    n_utt = sum(len(t.turns) for t in tune_tracks)
    print(f"tuning set: {len(tune_tracks)} sessions (seed offsets {tuning[0]}..{tuning[-1]}), {n_utt} utterances")
    choices = tune(tune_tracks)
    for c in choices:
        st = c.stats
        print(f"  level criterion {'off' if c.energy_onset_db is None else f'{c.energy_onset_db:.0f} dB'}, "
              f"release {c.release:.2f}: onset delay median {_pct(st.onset_delays, 50):.3f} s, p95 "
              f"{_pct(st.onset_delays, 95):.3f}, max {max(st.onset_delays):.3f} -> pre-roll {c.pre_roll_s:.3f} s; "
              f"release lag median {_pct(st.release_lags, 50):.3f}, p95 {_pct(st.release_lags, 95):.3f}, "
              f"max {max(st.release_lags):.3f} -> post-roll {c.post_roll_s:.3f} s; forwarded {c.forwarded_s:.0f} s, "
              f"words lost {c.lost}/{c.words}, utterances never detected {st.missed}")
    best = choices[0]
    shipped = GateConfig()
    print(f"chosen: level {best.energy_onset_db} dB, release {best.release}, pre-roll {best.pre_roll_s} s, post-roll "
          f"{best.post_roll_s} s; shipped GateConfig(): level {shipped.energy_onset_db} dB, release "
          f"{shipped.release_threshold}, pre-roll {shipped.pre_roll_s} s, post-roll "
          f"{shipped.post_roll_s} s {'(the same)' if best.config() == shipped else '(DIFFERENT: update GateConfig)'}")
    old = GateConfig(release_threshold=0.35, pre_roll_s=1.0, post_roll_s=1.2, energy_onset_db=None)
    for label, ks in (("recorded sessions", (0,)), (f"fresh seeds {fresh[0]}..{fresh[-1]}", fresh)):
        tracks = [track(variant(s, k), cache_dir) for k in ks for s in SESSIONS.values()]
        for name, cfg in (("shipped", shipped), ("previous (Silero only, 1.0/1.2 s)", old),
                          ("no pre/post-roll (trivial)", dataclasses.replace(shipped, pre_roll_s=0.0,
                                                                             post_roll_s=0.0))):
            rows = evaluate(tracks, cfg)
            lost, words = sum(r[1] for r in rows), sum(r[2] for r in rows)
            fwd, secs = sum(r[3] for r in rows), sum(r[4] for r in rows)
            print(f"  {label}, {name}: words lost {lost}/{words}, forwarded {fwd:.0f}/{secs:.0f} s "
                  f"({fwd / secs:.1%})")
            if name == "shipped":
                for r in rows:
                    if r[1]:
                        print(f"    {r[0]}: {r[1]} lost")
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0
