"""vision-dedup benchmark: hash + decision throughput vs the imagehash reference, agreement, corpus dedup figures.

    uv run python bench/vision/run.py            # full: 720p/1080p throughput, 720p corpus (a few minutes)
    uv run python bench/vision/run.py --quick    # smoke run, < 60 s

Everything runs on one thread (OpenCV and BLAS pinned to one thread), so frames/s is per core. CPU time
(thread_time) is reported next to wall time: on a shared machine wall time includes waiting for a core.
The reference is what the seed did for every frame: `imagehash.phash(Image.frombytes("RGB", ...))`.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import cv2  # noqa: E402
import imagehash  # noqa: E402
import numpy as np  # noqa: E402
from livekit import rtc  # noqa: E402
from PIL import Image  # noqa: E402

from frugal.api.vision.v1 import vision_pb2  # noqa: E402
from frugal.devkit.vision import corpus  # noqa: E402
from frugal.devkit.vision.evaluation import i420_frame  # noqa: E402
from frugal.devkit.vision.path import PathScore, PathSim, rgb_video_frame, score_path, seed_rule_keeps  # noqa: E402
from frugal.gateway.screen import FrameThrottle, TrackSampler, VisionFrameStreamer  # noqa: E402
from frugal.vision.dedup import DedupConfig, DedupTracker  # noqa: E402
from frugal.vision.frames import FrameLimits, luma_thumbnail, thumbnail_from_luma  # noqa: E402
from frugal.vision.phash import hamming, phash  # noqa: E402
from frugal.vision.pipeline import StreamCore  # noqa: E402

cv2.setNumThreads(1)
LIMITS = FrameLimits()


@dataclass(frozen=True)
class Timing:
    wall: list[float]
    cpu: list[float]

    def pct(self, p: float) -> float:
        return float(np.percentile(self.wall, p)) * 1000

    @property
    def cpu_mean_ms(self) -> float:
        return statistics.fmean(self.cpu) * 1000

    @property
    def fps_per_core(self) -> float:
        return 1.0 / statistics.fmean(self.cpu)


def timed(fn: Callable[[Any, int], object], n: int, arrive: Callable[[int], Any]) -> Timing:
    """Times fn(arrive(i), i) for i < n; `arrive` (not timed) hands over a freshly received frame, as the
    network does: a new bytes object or a freshly parsed message, in cache like a frame just received."""
    fn(arrive(0), 0)  # warm-up
    wall, cpu = [], []
    for i in range(n):
        x = arrive(i)
        w0, c0 = time.perf_counter(), time.thread_time()
        fn(x, i)
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - w0)
    return Timing(wall, cpu)


def frames_for(width: int, height: int, count: int) -> list[corpus.CorpusFrame]:
    """Realistic, varied screens: frames from several corpus scenarios at this size."""
    per = max(1, count // 4)
    out: list[corpus.CorpusFrame] = []
    for scenario in ("typing", "slides", "scrolling", "window_switching"):
        picked = [f for f in corpus.generate(scenario, width, height, 8.0, seed=1) if f.index % 7 == 0]
        out.extend(picked[:per])
    return out


def throughput(quick: bool) -> list[str]:
    lines = []
    head = (f"{'input':<14} {'implementation':<34} {'frames/s/core':>13} {'cpu ms':>8} {'p50 ms':>8} "
            f"{'p95 ms':>8} {'p99 ms':>8} {'speed-up':>9}")
    lines += [head, "-" * len(head)]
    n_ours, n_ref = (300, 25) if quick else (2000, 150)
    for width, height in ((1280, 720), (1920, 1080)):
        frames = frames_for(width, height, 24)
        rgb_bytes = [f.rgb.tobytes() for f in frames]
        wire = {
            "I420": [i420_frame(f).SerializeToString() for f in frames],
            "RGB24": [vision_pb2.Frame(format=vision_pb2.FRAME_FORMAT_RGB24, width=width, height=height,
                                       timestamp_ms=f.timestamp_ms, data=b).SerializeToString()
                      for f, b in zip(frames, rgb_bytes, strict=True)],
        }

        def reference(data: bytes, i: int, size: tuple[int, int] = (width, height)) -> object:
            return imagehash.phash(Image.frombytes("RGB", size, data))

        def arrive_rgb(i: int, d: list[bytes] = rgb_bytes) -> bytearray:
            return bytearray(d[i % len(d)])

        ref = timed(reference, n_ref, arrive_rgb)
        for fmt, messages in wire.items():
            tracker = DedupTracker(DedupConfig())

            def parse(i: int, messages: list[bytes] = messages) -> Any:
                return vision_pb2.Frame.FromString(messages[i % len(messages)])

            def decide(f: Any, i: int, tracker: DedupTracker = tracker) -> object:
                return tracker.decide(luma_thumbnail(f, LIMITS), i * 33.3)

            def hash_only(f: Any, i: int) -> object:
                return phash(luma_thumbnail(f, LIMITS).pixels)

            label = f"{width}x{height} {fmt}"
            rows = [("ours: proto->pHash+decision", timed(decide, n_ours, parse)),
                    ("ours: proto->pHash", timed(hash_only, n_ours, parse))]
            if fmt == "I420":
                raw = [i420_frame(f).data for f in frames]

                def from_plane(buf: bytearray, i: int, shape: tuple[int, int] = (height, width)) -> object:
                    y = np.frombuffer(buf, np.uint8, count=shape[0] * shape[1]).reshape(shape)
                    return phash(thumbnail_from_luma(y).pixels)

                def arrive_i420(i: int, d: list[bytes] = raw) -> bytearray:
                    return bytearray(d[i % len(d)])

                rows.insert(0, ("ours: I420 bytes->pHash", timed(from_plane, n_ours, arrive_i420)))
            for name, t in rows:
                lines.append(f"{label:<14} {name:<34} {t.fps_per_core:>13.0f} {t.cpu_mean_ms:>8.3f} {t.pct(50):>8.3f} "
                             f"{t.pct(95):>8.3f} {t.pct(99):>8.3f} {ref.cpu_mean_ms / t.cpu_mean_ms:>8.1f}x")
        lines.append(f"{f'{width}x{height} RGB':<14} {'reference: imagehash.phash(PIL)':<34} {ref.fps_per_core:>13.1f} "
                     f"{ref.cpu_mean_ms:>8.3f} {ref.pct(50):>8.3f} {ref.pct(95):>8.3f} {ref.pct(99):>8.3f} "
                     f"{'1.0x':>9}")
    lines.append("speed-up = reference CPU ms / ours CPU ms, same run, same 24 frames (rotating). Each call gets "
                 "a freshly received frame (untimed): new bytes for the reference and the 'bytes' row, a freshly "
                 "parsed Frame message for the 'proto' rows, which include reading the bytes out of the message "
                 "(a copy) and validation, as the service does. The reference needs RGB: an I420 frame would "
                 "first have to be converted (not counted).")
    return lines


def agreement(quick: bool) -> list[str]:
    width, height = (640, 360) if quick else (1280, 720)
    fast_h: list[int] = []
    ref_h: list[int] = []
    for scenario in corpus.SCENARIOS:
        for f in corpus.generate(scenario, width, height, 6.0 if quick else 12.0, seed=5):
            if f.index % 6 == 0:
                fast_h.append(phash(luma_thumbnail(i420_frame(f), LIMITS).pixels))
                ref_h.append(int(str(imagehash.phash(Image.frombytes("RGB", (width, height), f.rgb.tobytes()))), 16))
    bits = [hamming(a, b) for a, b in zip(fast_h, ref_h, strict=True)]
    agree = total = exact = 0
    for i in range(len(fast_h)):
        for j in range(i):
            total += 1
            a, b = hamming(fast_h[i], fast_h[j]), hamming(ref_h[i], ref_h[j])
            agree += (a > 10) == (b > 10)
            exact += a == b
    return [
        f"pHash vs imagehash on {len(fast_h)} corpus frames at {width}x{height} (ours from the I420 Y plane):",
        f"  bits differing per frame: mean {np.mean(bits):.2f}, p95 {np.percentile(bits, 95):.0f}, "
        f"max {max(bits)} of 64",
        f"  keep/skip decision (distance > 10) agreement on {total} frame pairs: {agree / total:.2%} "
        f"(identical distance on {exact / total:.1%})",
    ]


def path_figures(quick: bool) -> list[str]:
    """The whole path (gateway sampler -> vision-dedup StreamCore) on held-out data, per input rate and state."""
    width, height = (640, 360) if quick else (1280, 720)
    seconds = 10.0 if quick else 20.0
    seeds = corpus.EVALUATION_SEEDS[:1] if quick else corpus.EVALUATION_SEEDS
    kinds = corpus.SCENARIOS
    rates = (5, 30) if quick else (5, 15, 30)
    out = [f"Held-out evaluation: seeds {list(seeds)} (tuning used seeds {list(corpus.TUNING_SEEDS)}), all "
           f"{len(kinds)} scenario kinds; kinds never used for tuning: {', '.join(corpus.HELD_OUT_KINDS)}.",
           f"{width}x{height}, {seconds:.0f} s per scenario and seed. Gateway cap: 5 FPS speaking and silent "
           "(trailing edge); model frames = frames vision-dedup keeps (incl. quiet-time timer keeps).",
           "seed rule = imagehash pHash of every frame at 1 FPS, keep when distance > 10 (same frames).", ""]
    head = (f"{'input':>6} {'state':<8} {'subset':<9} {'events':>6} {'model/min':>9} {'kept':>5} {'ratio':>5} "
            f"{'miss@1s':>7} {'miss@2.5s':>9} {'extra':>5} | {'seed/min':>8} {'seed miss@1s':>12} "
            f"{'seed miss@2.5s':>14}")
    out += [head, "-" * len(head)]
    notes: list[str] = []
    cpu = {"s": 0.0, "n": 0}
    zero = PathScore(0, 0, 0, 0, 0, 0.0)
    totals: dict[tuple[int, bool, str], PathScore] = {}
    seed_tot: dict[tuple[int, bool, str], PathScore] = {}

    def ih(f: corpus.CorpusFrame) -> imagehash.ImageHash:
        return imagehash.phash(Image.frombytes("RGB", (f.rgb.shape[1], f.rgb.shape[0]), f.rgb.tobytes()))

    for kind in kinds:
        for seed in seeds:
            # One pass over the rendered frames feeds every configuration (the corpus is not kept in memory).
            sims = {(rate, speaking): PathSim(track_fps=rate, speaking=speaking, scenario=kind)
                    for rate in rates for speaking in (False, True)}
            seed_frames: list[corpus.CorpusFrame] = []
            labels: list[tuple[int, str]] = []
            n_frames = 0
            for f in corpus.generate(kind, width, height, seconds, seed):
                n_frames += 1
                if f.meaningful:
                    labels.append((f.index, f.note))
                vf = rgb_video_frame(f.rgb) if f.index % 2 == 0 else None
                for sim in sims.values():
                    sim.feed(f, vf if sim.step % 2 == 0 else None)
                if f.index % corpus.FPS == 0:
                    seed_frames.append(f)
            seed_keeps = seed_rule_keeps(seed_frames, ih, lambda a, b: int(a - b))
            seed_sc = score_path(labels, seed_keeps, n_frames / corpus.FPS, n_frames)
            for (rate, speaking), sim in sims.items():
                run = sim.finish()
                cpu["s"] += run.cpu_s
                cpu["n"] += run.frames_sent
                sc = score_path(run.events, run.keeps, run.seconds, n_frames, f"{kind}/seed {seed}")
                notes += [f"{rate} FPS {'speaking' if speaking else 'silent'}: {n}" for n in sc.missed_notes]
                for subset in ("all", "held-out" if kind in corpus.HELD_OUT_KINDS else "tuning"):
                    key = (rate, speaking, subset)
                    totals[key] = totals.get(key, zero) + sc
                    seed_tot[key] = seed_tot.get(key, zero) + seed_sc
            print(f"  ... {kind} seed {seed} done", file=sys.stderr)
    for rate in rates:
        for speaking in (False, True):
            for subset in ("tuning", "held-out", "all"):
                t, z = totals[rate, speaking, subset], seed_tot[rate, speaking, subset]
                out.append(f"{rate:>4}fps {'speaking' if speaking else 'silent':<8} {subset:<9} {t.events:>6} "
                           f"{t.kept_per_minute:>9.1f} {t.kept:>5} {t.kept / max(1, t.events):>5.2f} "
                           f"{t.missed_1s:>7} {t.missed_2_5s:>9} {t.extra:>5} | {z.kept_per_minute:>8.1f} "
                           f"{z.missed_1s:>12} {z.missed_2_5s:>14}")
    out.append("")
    out.append("ratio = model frames / meaningful changes (target <= 1.2); target: 0 missed at 2.5 s, <= 1 at 1 s.")
    if width < 1280:
        out.append(f"(smoke run at {width}x{height}: digit_edit's 11 px text is 5 px tall there, and a digit redrawn "
                   "over another changes fewer than MIN_DETAIL_PIXELS pixels; the full run is at 1280x720)")
    out += ["missed: " + n for n in notes] or ["missed: none"]
    out.append(f"CPU of the whole path per frame sent to vision-dedup (gateway conversion + dedup): "
               f"{cpu['s'] / max(1, cpu['n']) * 1000:.2f} ms at {width}x{height}")
    return out


def path_cpu(quick: bool) -> list[str]:
    """CPU per frame of the whole path (RGBA LiveKit frame -> I420 (+ area downscale) -> proto -> dedup)."""
    lines = [f"{'track':<10} {'sent as':<10} {'gateway ms':>10} {'dedup ms':>9} {'total ms':>9}"]
    n = 40 if quick else 150
    for width, height in ((1280, 720), (1920, 1080)):
        frames = frames_for(width, height, 24)
        # What rtc.VideoStream(format=I420) hands the sampler: I420 frames (converted here, untimed).
        vframes = [rgb_video_frame(f.rgb).convert(rtc.VideoBufferType.I420) for f in frames]
        core = StreamCore(DedupConfig(), LIMITS)
        sent: list[Any] = []

        sampler = TrackSampler(_Sink(sent), FrameThrottle(1000.0, 1000.0), max_width=1280)
        g = d = 0.0
        for i in range(n):
            c0 = time.thread_time()
            sampler.push(vframes[i % len(vframes)], at=i * 0.2, timestamp_ms=i * 200)
            c1 = time.thread_time()
            core.handle(vision_pb2.StreamFramesRequest(frame=sent[-1]))
            c2 = time.thread_time()
            g += c1 - c0
            d += c2 - c1
        w, h = sent[-1].width, sent[-1].height
        lines.append(f"{f'{width}x{height}':<10} {f'{w}x{h}':<10} {g / n * 1000:>10.2f} {d / n * 1000:>9.2f} "
                     f"{(g + d) / n * 1000:>9.2f}")
    lines.append("gateway = I420 frame (as rtc.VideoStream delivers it) -> area downscale to 1280 wide -> Frame "
                 "message; dedup = "
                 "StreamCore.handle (validate, thumbnail + detail image, pHash, decision). One thread.")
    return lines


def stream_memory(quick: bool) -> list[str]:
    """Resident memory of N concurrent streams' decision state, measured in a fresh process (so memory freed
    by the figures above cannot be reused and hide the growth)."""
    import subprocess

    n = 10 if quick else 50
    lines = []
    for mode in ("steady", "pending"):
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(n), "--memory-mode", mode],
                             capture_output=True, text=True, check=True)
        lines += out.stdout.strip().splitlines()
    return lines


def memory_child(n: int, mode: str) -> None:
    """mode "steady": each stream's timers fire before the next stream is made (its last frame is kept and
    released, as within a second in service); "pending": every stream still holds its last frame."""
    import gc
    import tracemalloc

    # Small synthetic screens (rendering corpus scenarios would leave freed heap behind that the streams'
    # state could reuse, hiding it from RSS).
    rng = np.random.default_rng(0)
    msgs = []
    for k in range(8):
        rgb = np.full((720, 1280, 3), 230, np.uint8)
        for _ in range(40 + 10 * k):
            x, y = int(rng.integers(0, 1200)), int(rng.integers(0, 700))
            rgb[y : y + 12, x : x + int(rng.integers(20, 80))] = rng.integers(0, 120)
        msgs.append(i420_frame(corpus.CorpusFrame("mem", k, k * 200, rgb, False)))
    cores = []
    gc.collect()
    tracemalloc.start()
    before = _rss_mb()
    for _ in range(n):
        core = StreamCore(DedupConfig(), LIMITS)
        for i, m in enumerate(msgs):
            m2 = vision_pb2.Frame()
            m2.CopyFrom(m)
            m2.timestamp_ms = i * 200 + 1
            core.handle(vision_pb2.StreamFramesRequest(frame=m2))
        if mode == "steady":
            while (due := core.next_due()) is not None and core.fire(due[0], due[1]) is not None:
                pass
        cores.append(core)
    gc.collect()
    rss = _rss_mb() - before
    traced, _ = tracemalloc.get_traced_memory()
    held = sum(1 for c in cores for t in c.tracks.values() if t.last_frame is not None)
    held_bytes = next((t.last_frame.ByteSize() for c in cores for t in c.tracks.values()
                       if t.last_frame is not None), 0)
    # Where it goes: the arrays one track holds (exact sizes).
    tr = next(iter(cores[0].tracks.values())).tracker
    parts = {
        "detail images (kept, anchor)": tr._kept_detail.nbytes + tr._anchor_detail.nbytes,  # type: ignore[union-attr]
        "per-pixel event ticks (uint16) + counts (uint8)": tr._px_last_event.nbytes + tr._px_events.nbytes,
        "thumbnails (kept, last, anchor)": sum(a.nbytes for a in (tr._kept, tr._prev, tr._anchor)
                                               if a is not None),
        "kept frame's luma, compressed": tr._kept_native.nbytes if tr._kept_native is not None else 0,
        "tiles, scratch": tr._tile_activity.nbytes * 3 + (tr._geo.pad.nbytes if tr._geo is not None else 0),
    }
    what = ("no change pending (timers fired)" if mode == "steady" else
            f"a change pending on every stream, {held} holding their last frame ({held_bytes / 2**20:.2f} MB as "
            "received; held until it is kept, replaced or its timer fires, <= 1 s)")
    print(f"{n} streams x 1 track at 1280x720 (8 frames each), fresh process, {what}: RSS +{rss:.1f} MB "
          f"({rss / n:.2f} MB per stream), allocations held {traced / 2**20:.1f} MB ({traced / 2**20 / n:.2f} MB "
          "per stream)")
    if mode == "pending":
        print("  decision state of one track: " + ", ".join(f"{k} {v / 1024:.0f} KB" for k, v in parts.items())
              + f"; total {sum(parts.values()) / 2**20:.2f} MB")
        print("Bound per stream: MAX_TRACKS_PER_STREAM (4) x (decision state + one held frame) + VISION_QUEUE_SIZE "
              "(1) kept frame waiting for the model + the one being analysed.")


class _Sink(VisionFrameStreamer):
    def __init__(self, sent: list[Any]) -> None:
        self.track_id = "screen"
        self.sent = sent

    def offer(self, frame: Any) -> None:
        self.sent.append(frame)


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run (< 60 s): fewer iterations, 640x360 corpus")
    ap.add_argument("--skip-corpus", action="store_true", help="throughput and agreement only")
    ap.add_argument("--corpus-only", action="store_true", help="whole-path figures, CPU and memory only")
    ap.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--memory-mode", default="pending", choices=("steady", "pending"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.memory_mode)
        return
    started = time.perf_counter()
    print(f"vision-dedup bench ({'quick' if args.quick else 'full'}); OpenCV {cv2.__version__}, "
          f"NumPy {np.__version__}, imagehash {imagehash.__version__}, 1 thread; load avg {os.getloadavg()[0]:.1f}")
    if not args.corpus_only:
        print("\n== Hash + decision throughput (per core) ==")
        print("\n".join(throughput(args.quick)))
        print("\n== Agreement with imagehash ==")
        print("\n".join(agreement(args.quick)))
    if not args.skip_corpus:
        print("\n== The whole path on held-out data (gateway sampler -> vision-dedup) ==")
        print("\n".join(path_figures(args.quick)))
        print("\n== CPU per frame of the whole path ==")
        print("\n".join(path_cpu(args.quick)))
        print("\n== Memory of concurrent streams ==")
        print("\n".join(stream_memory(args.quick)))
    print(f"\n(total {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
