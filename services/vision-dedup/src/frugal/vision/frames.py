"""Frame decoding: from the wire formats to the small grayscale thumbnail the dedup works on.

The hot path never builds an RGB image: for I420 the Y plane *is* the luma image, and it is reduced
by an integer factor with OpenCV's area interpolation (a box filter, the fast path); RGB24 is reduced
first and converted to luma on the thumbnail; JPEG/PNG are decoded straight to grayscale (JPEG at a
reduced DCT scale when the declared size allows it).

Every malformed input raises :class:`FrameError` with a message that says what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import cv2
import numpy as np
import numpy.typing as npt

from frugal.api.vision.v1 import vision_pb2

U8 = npt.NDArray[np.uint8]


def u8(a: Any) -> U8:
    """OpenCV's stubs type results as generic arrays; ours are 8-bit."""
    return cast(U8, a)

FORMAT_NAMES = {
    vision_pb2.FRAME_FORMAT_I420: "i420",
    vision_pb2.FRAME_FORMAT_RGB24: "rgb24",
    vision_pb2.FRAME_FORMAT_JPEG: "jpeg",
    vision_pb2.FRAME_FORMAT_PNG: "png",
}
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_REDUCED = ((8, cv2.IMREAD_REDUCED_GRAYSCALE_8), (4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
            (2, cv2.IMREAD_REDUCED_GRAYSCALE_2))


class FrameError(ValueError):
    """A frame that cannot be used; the message is the verdict's reason (after "malformed: ")."""


@dataclass(frozen=True, slots=True)
class FrameLimits:
    max_width: int = 7680
    max_height: int = 4320
    max_pixels: int = 7680 * 4320
    # JPEG/PNG: largest image (read from its header) that is decoded at all. A PNG cannot be decoded at a
    # reduced scale: an 8K screenshot costs seconds of CPU for a thumbnail.
    max_decode_pixels: int = 3840 * 2160


@dataclass(frozen=True, slots=True)
class Thumbnail:
    """Grayscale thumbnail: `pixels[y, x]` is the mean luma of a `factor` x `factor` block of the frame."""

    pixels: U8
    factor: int
    width: int
    height: int
    # A finer luma image (long side ~640 px, `detail_factor` x `detail_factor` blocks) for changes that
    # vanish in the thumbnail: a number in a cell, a line of text, a pointer. None: use `pixels`.
    detail: U8 | None = None
    detail_factor: int = 0
    # The luma plane the thumbnails were made from (`luma_factor` x `luma_factor` frame pixels per pixel: 1,
    # or the reduced scale a JPEG was decoded at). Often a view of the frame's bytes: valid while the frame
    # is, never to be held (dedup compares a small edit at this resolution, where block averages of
    # overlapping strokes cannot cancel out, and keeps a compressed copy only of the kept frame's).
    luma: U8 | None = None
    luma_factor: int = 1


def format_name(fmt: int) -> str:
    return FORMAT_NAMES.get(fmt, "unknown")  # type: ignore[call-overload, no-any-return]


def downscale_factor(width: int, height: int, long_side: int) -> int:
    """Integer reduction so that the thumbnail's longest side is about `long_side` (>= it)."""
    return max(1, max(width, height) // long_side)


def _reduce(img: U8, factor: int) -> U8:
    """Box-average `factor` x `factor` blocks (the frame is cropped to a multiple of `factor`).

    Done as repeated 2x reductions (OpenCV's SIMD path for INTER_AREA at exactly 1/2, about 5x faster
    than one integer-factor pass) followed by one pass for the odd remainder of the factor.
    """
    if factor == 1:
        return np.ascontiguousarray(img)
    h, w = img.shape[:2]
    th, tw = h // factor, w // factor
    out = img[: th * factor, : tw * factor]
    rest = factor
    while rest % 2 == 0:
        rest //= 2
        out = u8(cv2.resize(out, (tw * rest, th * rest), interpolation=cv2.INTER_AREA))
    if rest > 1:
        out = u8(cv2.resize(out, (tw, th), interpolation=cv2.INTER_AREA))
    return out


def _check_dims(frame: Any, limits: FrameLimits, *, allow_zero: bool = False) -> tuple[int, int]:
    w, h = int(frame.width), int(frame.height)
    if allow_zero and w == 0 and h == 0:
        return 0, 0
    if w <= 0 or h <= 0:
        raise FrameError(f"invalid size {w}x{h}: width and height must be positive")
    if w > limits.max_width or h > limits.max_height or w * h > limits.max_pixels:
        raise FrameError(
            f"oversized: {w}x{h} exceeds the limit {limits.max_width}x{limits.max_height} "
            f"({limits.max_pixels} pixels)"
        )
    return w, h


def _i420_y_plane(frame: Any, w: int, h: int) -> U8:
    cw, ch = (w + 1) // 2, (h + 1) // 2
    if frame.HasField("i420"):
        planes = frame.i420
        sy = planes.stride_y or w
        su = planes.stride_u or cw
        sv = planes.stride_v or cw
        if sy < w or su < cw or sv < cw:
            raise FrameError(f"size mismatch: I420 strides ({sy}, {su}, {sv}) smaller than the row widths ({w}, {cw})")
        for name, plane, stride, rows, row in (("y", planes.y, sy, h, w), ("u", planes.u, su, ch, cw),
                                               ("v", planes.v, sv, ch, cw)):
            need = stride * (rows - 1) + row
            if len(plane) < need:
                raise FrameError(
                    f"size mismatch: I420 {w}x{h} {name} plane needs at least {need} bytes "
                    f"(stride {stride}), got {len(plane)}"
                )
        y = planes.y
        if len(y) >= sy * h:
            return np.frombuffer(y, dtype=np.uint8, count=sy * h).reshape(h, sy)[:, :w]
        # Last row may be unpadded: view it through strides.
        arr = np.frombuffer(y, dtype=np.uint8)
        return np.lib.stride_tricks.as_strided(arr, shape=(h, w), strides=(sy, 1), writeable=False)
    need = w * h + 2 * cw * ch
    data = frame.data  # every access to a bytes field copies it: once only
    if len(data) != need:
        raise FrameError(f"size mismatch: I420 {w}x{h} needs {need} bytes (Y, U, V packed), got {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, count=w * h).reshape(h, w)


DETAIL_LONG_SIDE = 640


def thumbnail_from_luma(y: U8, long_side: int = 160, *, width: int = 0, height: int = 0, scale: int = 1
                        ) -> Thumbnail:
    """Thumbnail (and detail image) of a luma plane already in memory (e.g. an I420 Y plane viewed with
    np.frombuffer). `scale` says the plane is already reduced by that factor from a `width` x `height` frame
    (a JPEG decoded at reduced scale)."""
    h, w = y.shape
    fw, fh = width or w * scale, height or h * scale
    k = downscale_factor(fw, fh, long_side)
    kd = max(1, max(fw, fh) // DETAIL_LONG_SIDE)
    if kd % scale:
        kd = scale  # the plane was decoded coarser than the detail image wants: it is the detail image
    if kd % scale == 0 and k % kd == 0:
        # The detail image first, then the thumbnail from it: one pass over the full frame.
        detail = _reduce(y, kd // scale)
        return Thumbnail(_reduce(detail, k // kd), k, fw, fh, detail, kd, y, scale)
    detail = _reduce(y, max(1, kd // scale))
    return Thumbnail(_reduce(y, max(1, k // scale)), k, fw, fh, detail, max(1, kd // scale) * scale, y, scale)


def luma_thumbnail(frame: Any, limits: FrameLimits, long_side: int = 160) -> Thumbnail:
    """Validates `frame` (a vision_pb2.Frame) and reduces it to a grayscale thumbnail."""
    fmt = int(frame.format)
    if fmt == vision_pb2.FRAME_FORMAT_I420:
        w, h = _check_dims(frame, limits)
        return thumbnail_from_luma(_i420_y_plane(frame, w, h), long_side)
    if fmt == vision_pb2.FRAME_FORMAT_RGB24:
        w, h = _check_dims(frame, limits)
        data = frame.data
        if len(data) != w * h * 3:
            raise FrameError(f"size mismatch: RGB24 {w}x{h} needs {w * h * 3} bytes, got {len(data)}")
        rgb = np.frombuffer(data, dtype=np.uint8).reshape(h, w, 3)
        # Luma first (one SIMD pass, BT.601 weights as PIL's "L"), then the fast single-channel reduction.
        return thumbnail_from_luma(u8(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)), long_side)
    if fmt in (vision_pb2.FRAME_FORMAT_JPEG, vision_pb2.FRAME_FORMAT_PNG):
        return _encoded_thumbnail(frame, fmt, limits, long_side)
    raise FrameError(f"unknown format {fmt}: expected I420, RGB24, JPEG or PNG")


def _encoded_thumbnail(frame: Any, fmt: int, limits: FrameLimits, long_side: int) -> Thumbnail:
    name = "JPEG" if fmt == vision_pb2.FRAME_FORMAT_JPEG else "PNG"
    data: bytes = frame.data
    magic = _JPEG_MAGIC if fmt == vision_pb2.FRAME_FORMAT_JPEG else _PNG_MAGIC
    if not data.startswith(magic):
        raise FrameError(f"undecodable {name}: data does not start with the {name} signature")
    w, h = _check_dims(frame, limits, allow_zero=True)
    header = _png_size(data) if fmt == vision_pb2.FRAME_FORMAT_PNG else _jpeg_size(data)
    if header is None:
        raise FrameError(f"undecodable {name}: no image header found")
    hw, hh = header
    if hw <= 0 or hh <= 0:
        raise FrameError(f"undecodable {name}: the header says {hw}x{hh}")
    if (hw > limits.max_width or hh > limits.max_height or hw * hh > limits.max_pixels
            or hw * hh > limits.max_decode_pixels):
        raise FrameError(f"oversized: {name} is {hw}x{hh} ({hw * hh} pixels), over the decode limit of "
                         f"{min(limits.max_pixels, limits.max_decode_pixels)} pixels "
                         f"({limits.max_width}x{limits.max_height} at most)")
    if (w or h) and (w, h) != (hw, hh):
        raise FrameError(f"size mismatch: frame says {w}x{h}, the {name} is {hw}x{hh}")
    k = downscale_factor(hw, hh, long_side)
    kd = max(1, max(hw, hh) // DETAIL_LONG_SIDE)
    buf = np.frombuffer(data, dtype=np.uint8)
    decoded: U8 | None = None
    flag_k = 1
    if fmt == vision_pb2.FRAME_FORMAT_JPEG:
        for r, flag in _REDUCED:
            if k % r == 0 and kd % r == 0:
                decoded, flag_k = cast("U8 | None", cv2.imdecode(buf, flag)), r
                break
    if decoded is None:
        decoded, flag_k = cast("U8 | None", cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)), 1
    if decoded is None or decoded.size == 0:
        raise FrameError(f"undecodable {name}: the decoder rejected the data")
    return thumbnail_from_luma(decoded, long_side, width=hw, height=hh, scale=flag_k)


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the first SOFn marker (no decoding)."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        seg_len = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return None
            h = int.from_bytes(data[i + 5 : i + 7], "big")
            w = int.from_bytes(data[i + 7 : i + 9], "big")
            return w, h
        if seg_len < 2:
            return None
        i += 2 + seg_len
    return None


def frame_to_bgr(frame: Any) -> U8:
    """Full-colour BGR image of an (already validated) frame, for the vision model."""
    fmt = int(frame.format)
    w, h = int(frame.width), int(frame.height)
    if fmt == vision_pb2.FRAME_FORMAT_I420:
        cw, ch = (w + 1) // 2, (h + 1) // 2
        if frame.HasField("i420"):
            p = frame.i420
            y = _plane(p.y, w, h, p.stride_y or w)
            u = _plane(p.u, cw, ch, p.stride_u or cw)
            v = _plane(p.v, cw, ch, p.stride_v or cw)
        else:
            raw = np.frombuffer(frame.data, dtype=np.uint8)
            y = raw[: w * h].reshape(h, w)
            u = raw[w * h : w * h + cw * ch].reshape(ch, cw)
            v = raw[w * h + cw * ch :].reshape(ch, cw)
        if w % 2 or h % 2:
            # cv2's I420 converter needs even sizes: replicate the last row/column of Y, crop after.
            y = np.pad(y, ((0, 2 * ch - h), (0, 2 * cw - w)), mode="edge")
        packed = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(ch * 3, cw * 2)
        return u8(cv2.cvtColor(packed, cv2.COLOR_YUV2BGR_I420)[:h, :w])
    if fmt == vision_pb2.FRAME_FORMAT_RGB24:
        rgb = np.frombuffer(frame.data, dtype=np.uint8).reshape(h, w, 3)
        return u8(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    decoded = cv2.imdecode(np.frombuffer(frame.data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise FrameError("undecodable image")
    return u8(decoded)


def _plane(data: bytes, w: int, h: int, stride: int) -> U8:
    arr = np.frombuffer(data, dtype=np.uint8)
    if len(arr) >= stride * h:
        return np.ascontiguousarray(arr[: stride * h].reshape(h, stride)[:, :w])
    view = np.lib.stride_tricks.as_strided(arr, shape=(h, w), strides=(stride, 1), writeable=False)
    return np.ascontiguousarray(view)


def encode_for_model(frame: Any, max_side: int, quality: int = 80) -> tuple[bytes, str, int, int]:
    """JPEG bytes (mime type, width, height) of the frame, scaled to fit `max_side`.

    A JPEG that already fits is passed through untouched.
    """
    fmt = int(frame.format)
    if fmt == vision_pb2.FRAME_FORMAT_JPEG:
        size = _jpeg_size(frame.data)
        if size is not None and max(size) <= max_side:
            return bytes(frame.data), "image/jpeg", size[0], size[1]
    bgr = frame_to_bgr(frame)
    h, w = bgr.shape[:2]
    scale = min(1.0, max_side / max(w, h))
    if scale < 1.0:
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
        bgr = u8(cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA))
    ok, enc = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise FrameError("could not encode the frame as JPEG")
    return enc.tobytes(), "image/jpeg", w, h
