"""Perceptual hash (pHash) with OpenCV/NumPy, bit-compatible in layout with `imagehash.phash`.

imagehash: grayscale -> 32x32 (Pillow's Lanczos) -> 2-D DCT-II (scipy, unnormalised) -> top-left 8x8 ->
bit = coefficient > median. Here: the luma thumbnail (an integer box reduction of the frame, see
`frames`) -> 32x32 with Pillow's Lanczos-3 weights applied as two small precomputed matrices (the same
filter and the same 8-bit rounding between the two passes as Pillow, at a fraction of the cost) ->
`cv2.dct` (orthonormal) -> the same 8x8 block. The orthonormal DCT differs from scipy's unnormalised one
by a factor of sqrt(2) on row 0 and column 0 (and a global scale, which does not matter); it is undone
so the median is taken over the same relative values. Luma from the I420 Y plane is an affine function
of PIL's "L" (BT.601 limited range): the scale moves no bit, the offset moves only the DC term.
Bits are packed row-major, first bit most significant, so the hex string reads like imagehash's.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import numpy.typing as npt

HASH_SIZE = 8
_IMG = HASH_SIZE * 4
_SCALE = np.ones((HASH_SIZE, HASH_SIZE), dtype=np.float32)
_SCALE[0, :] *= np.float32(np.sqrt(2.0))
_SCALE[:, 0] *= np.float32(np.sqrt(2.0))


def _lanczos(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = np.where(np.abs(x) < 3.0, np.sinc(x) * np.sinc(x / 3.0), 0.0)
    return out


@functools.lru_cache(maxsize=64)
def resample_matrix(n_in: int, n_out: int) -> npt.NDArray[np.float32]:
    """(n_out, n_in) weights of Pillow's Lanczos resampling along one axis (Pillow's precompute_coeffs)."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    m = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        xs = np.arange(lo, hi, dtype=np.float64)
        w = _lanczos((xs - center + 0.5) / filterscale)
        total = w.sum()
        m[i, lo:hi] = w / total if total else 0.0
    return m.astype(np.float32)


@functools.lru_cache(maxsize=64)
def _resample_t(n_in: int, n_out: int) -> npt.NDArray[np.float32]:
    return np.ascontiguousarray(resample_matrix(n_in, n_out).T)


def phash(gray: npt.NDArray[np.uint8]) -> int:
    """64-bit pHash of a grayscale image (any size; usually the dedup thumbnail)."""
    h, w = gray.shape
    # Horizontal pass, then vertical, each rounded to 8 bits: what Pillow does for an "L" image.
    tmp = gray.astype(np.float32) @ _resample_t(w, _IMG)
    np.rint(tmp, out=tmp)
    np.clip(tmp, 0, 255, out=tmp)
    small = resample_matrix(h, _IMG) @ tmp
    np.rint(small, out=small)
    np.clip(small, 0, 255, out=small)
    low = cv2.dct(small)[:HASH_SIZE, :HASH_SIZE] * _SCALE
    ordered = np.sort(low, axis=None)
    median = (ordered[31] + ordered[32]) / 2  # 64 coefficients: the mean of the two middle ones
    return int.from_bytes(np.packbits(low > median).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def to_hex(h: int) -> str:
    return f"{h:016x}"


def from_hex(s: str) -> int:
    return int(s, 16)
