"""Frame decoding: every input format to the same luma thumbnail, and clear errors for malformed frames."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pytest

from frugal.api.vision.v1 import vision_pb2
from frugal.vision.frames import (
    FrameError,
    FrameLimits,
    downscale_factor,
    encode_for_model,
    frame_to_bgr,
    luma_thumbnail,
)

LIMITS = FrameLimits()


def screen(w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[..., 0] = (xx * 255 // max(1, w - 1)).astype(np.uint8)
    img[..., 1] = (yy * 255 // max(1, h - 1)).astype(np.uint8)
    img[..., 2] = 128
    cv2.rectangle(img, (w // 4, h // 4), (w // 2, h // 2), (250, 250, 250), -1)
    cv2.putText(img, "Hello", (w // 8, 3 * h // 4), cv2.FONT_HERSHEY_SIMPLEX, w / 400, (0, 0, 0), 2)
    return img


def i420_planes(rgb: np.ndarray, pad: int = 0) -> Any:
    """I420 planes with row padding (stride = width + pad), odd sizes allowed."""
    h, w = rgb.shape[:2]
    cw, ch = (w + 1) // 2, (h + 1) // 2
    even = np.pad(rgb, ((0, 2 * ch - h), (0, 2 * cw - w), (0, 0)), mode="edge")
    raw = cv2.cvtColor(even, cv2.COLOR_RGB2YUV_I420).reshape(-1)
    y = raw[: 4 * ch * cw].reshape(2 * ch, 2 * cw)[:h, :w]
    u = raw[4 * ch * cw : 5 * ch * cw].reshape(ch, cw)
    v = raw[5 * ch * cw :].reshape(ch, cw)

    def padded(p: np.ndarray) -> bytes:
        return np.pad(p, ((0, 0), (0, pad)), constant_values=7).tobytes()

    return vision_pb2.Frame(format=vision_pb2.FRAME_FORMAT_I420, width=w, height=h, i420=vision_pb2.I420Planes(
        y=padded(y), u=padded(u), v=padded(v), stride_y=w + pad if pad else 0, stride_u=cw + pad if pad else 0,
        stride_v=cw + pad if pad else 0))


def packed_i420(rgb: np.ndarray) -> Any:
    h, w = rgb.shape[:2]
    return vision_pb2.Frame(format=vision_pb2.FRAME_FORMAT_I420, width=w, height=h,
                            data=cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes())


def encoded(rgb: np.ndarray, ext: str, declare: bool = True) -> Any:
    h, w = rgb.shape[:2]
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    fmt = vision_pb2.FRAME_FORMAT_JPEG if ext == ".jpg" else vision_pb2.FRAME_FORMAT_PNG
    return vision_pb2.Frame(format=fmt, width=w if declare else 0, height=h if declare else 0, data=buf.tobytes())


def close(a: np.ndarray, b: np.ndarray, tol: float) -> bool:
    return a.shape == b.shape and float(np.abs(a.astype(int) - b.astype(int)).mean()) <= tol


def test_downscale_factor_is_an_integer_reduction_to_about_160() -> None:
    assert downscale_factor(1280, 720, 160) == 8 and downscale_factor(1920, 1080, 160) == 12
    assert downscale_factor(720, 1280, 160) == 8 and downscale_factor(100, 50, 160) == 1


def test_every_format_gives_the_same_thumbnail() -> None:
    rgb = screen(640, 360)
    ref = luma_thumbnail(packed_i420(rgb), LIMITS)
    assert (ref.pixels.shape, ref.factor, ref.width, ref.height) == ((90, 160), 4, 640, 360)
    planes = luma_thumbnail(i420_planes(rgb, pad=32), LIMITS)
    assert np.array_equal(planes.pixels, ref.pixels), "strided Y plane must read exactly the same pixels"
    rgb24 = luma_thumbnail(vision_pb2.Frame(format=vision_pb2.FRAME_FORMAT_RGB24, width=640, height=360,
                                            data=rgb.tobytes()), LIMITS)
    # full-range luma (RGB) vs limited-range Y (I420): an affine map of each other
    fit = np.polyfit(ref.pixels.ravel().astype(float), rgb24.pixels.ravel().astype(float), 1)
    assert fit[0] == pytest.approx(255 / 219, rel=0.03)
    for ext in (".png", ".jpg"):
        for declare in (True, False):
            t = luma_thumbnail(encoded(rgb, ext, declare), LIMITS)
            assert (t.width, t.height, t.factor) == (640, 360, 4)
            assert close(t.pixels, rgb24.pixels, 3.0 if ext == ".jpg" else 0.6)


def test_odd_sizes_and_large_jpeg_reduced_decoding() -> None:
    rgb = screen(643, 361)
    t = luma_thumbnail(i420_planes(rgb), LIMITS)
    assert t.pixels.shape == (90, 160) and t.factor == 4
    bgr = frame_to_bgr(i420_planes(rgb, pad=3))
    assert bgr.shape == (361, 643, 3) and close(bgr[..., ::-1], rgb, 6.0)
    big = screen(1920, 1080)
    t = luma_thumbnail(encoded(big, ".jpg"), LIMITS)  # decoded at 1/4 scale by libjpeg, then 1/3 box
    assert t.pixels.shape == (90, 160) and t.factor == 12


def test_encode_for_model_fits_the_max_side() -> None:
    rgb = screen(1280, 720)
    data, mime, w, h = encode_for_model(packed_i420(rgb), 768)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    assert mime == "image/jpeg" and (w, h) == (768, 432) and img.shape == (432, 768, 3)
    small_jpeg = encoded(screen(320, 180), ".jpg")
    assert encode_for_model(small_jpeg, 768)[0] == small_jpeg.data  # passed through untouched


def _png_with_size(w: int, h: int) -> bytes:
    ok, buf = cv2.imencode(".png", np.zeros((4, 4), np.uint8))
    data = bytearray(buf.tobytes())
    data[16:20], data[20:24] = w.to_bytes(4, "big"), h.to_bytes(4, "big")
    return bytes(data)


@pytest.mark.parametrize(("frame", "message"), [
    (vision_pb2.Frame(format=vision_pb2.FRAME_FORMAT_I420, width=64, height=36, data=b"\0" * 100),
     "size mismatch: I420 64x36 needs 3456 bytes"),
    (vision_pb2.Frame(format=vision_pb2.FRAME_FORMAT_I420, width=64, height=36,
                      i420=vision_pb2.I420Planes(y=b"\0" * 2304, u=b"\0" * 10, v=b"\0" * 576)),
     "size mismatch: I420 64x36 u plane needs at least 576 bytes"),
    (vision_pb2.Frame(format=vision_pb2.FRAME_FORMAT_I420, width=64, height=36,
                      i420=vision_pb2.I420Planes(y=b"\0" * 4096, u=b"\0" * 576, v=b"\0" * 576, stride_y=32)),
     "strides (32, 32, 32) smaller than the row widths"),
    (vision_pb2.Frame(format=vision_pb2.FRAME_FORMAT_RGB24, width=64, height=36, data=b"\0" * 64 * 36),
     "size mismatch: RGB24 64x36 needs 6912 bytes, got 2304"),
    (vision_pb2.Frame(format=vision_pb2.FRAME_FORMAT_UNSPECIFIED, width=64, height=36), "unknown format 0"),
    (vision_pb2.Frame(format=42, width=64, height=36), "unknown format 42"),  # type: ignore[arg-type]
    (vision_pb2.Frame(format=vision_pb2.FRAME_FORMAT_RGB24, width=0, height=36), "invalid size 0x36"),
    (vision_pb2.Frame(format=vision_pb2.FRAME_FORMAT_RGB24, width=-5, height=36), "invalid size -5x36"),
    (vision_pb2.Frame(format=vision_pb2.FRAME_FORMAT_I420, width=20000, height=36), "oversized: 20000x36"),
    (vision_pb2.Frame(format=vision_pb2.FRAME_FORMAT_RGB24, width=7680, height=4320 * 2), "oversized"),
    (vision_pb2.Frame(format=vision_pb2.FRAME_FORMAT_JPEG, data=b"not a jpeg"), "undecodable JPEG: data does not"),
    (vision_pb2.Frame(format=vision_pb2.FRAME_FORMAT_JPEG, data=b"\xff\xd8\xff\xe0" + b"\0" * 30),
     "undecodable JPEG"),
    (vision_pb2.Frame(format=vision_pb2.FRAME_FORMAT_PNG, data=b"\x89PNG\r\n\x1a\n" + b"\0" * 40), "undecodable PNG"),
    (vision_pb2.Frame(format=vision_pb2.FRAME_FORMAT_PNG, data=_png_with_size(100_000, 100_000)),
     "oversized: PNG is 100000x100000"),
    (vision_pb2.Frame(format=vision_pb2.FRAME_FORMAT_PNG, data=_png_with_size(4, 4)[:40] + b"garbage"),
     "undecodable PNG: the decoder rejected"),
])
def test_malformed_frames_raise_clear_errors(frame: Any, message: str) -> None:
    with pytest.raises(FrameError, match=message.replace("(", r"\(").replace(")", r"\)")):
        luma_thumbnail(frame, LIMITS)


def test_declared_size_must_match_the_encoded_image() -> None:
    f = encoded(screen(320, 180), ".png")
    f.width = 640
    with pytest.raises(FrameError, match="size mismatch: frame says 640x180, the PNG is 320x180"):
        luma_thumbnail(f, LIMITS)
