"""Perceptual hash (pHash) with OpenCV, bit-compatible in layout with `imagehash.phash`.

imagehash: grayscale -> 32x32 (Pillow's Lanczos) -> 2-D DCT-II (scipy, unnormalised) -> top-left 8x8 ->
bit = coefficient > median. Here: the luma thumbnail (an integer box reduction of the frame, see
`frames`) -> 32x32 with Pillow's Lanczos-3 weights applied as two small precomputed matrices (the same
filter as imagehash, at a fraction of the cost) -> `cv2.dct` (orthonormal) -> the same 8x8 block. The orthonormal DCT differs from scipy's unnormalised one by a factor of sqrt(2)
on row 0 and column 0 (and a global scale, which does not matter); it is undone below so the median
is taken over the same relative values. Luma from the I420 Y plane is an affine function of PIL's
"L" (BT.601 limited range): the scale does not move any bit, the offset moves only the DC term.
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
_WEIGHTS = (1 << np.arange(HASH_SIZE * HASH_SIZE - 1, -1, -1, dtype=np.uint64)).astype(np.uint64)


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


def phash(gray: npt.NDArray[np.uint8]) -> int:
    """64-bit pHash of a grayscale image (any size; usually the dedup thumbnail)."""
    h, w = gray.shape
    # Horizontal pass, then vertical, each rounded to 8 bits: what Pillow does for an "L" image.
    tmp = np.clip(np.rint(gray.astype(np.float32) @ resample_matrix(w, _IMG).T), 0, 255)
    small = np.clip(np.rint(resample_matrix(h, _IMG) @ tmp), 0, 255)
    low = cv2.dct(small)[:HASH_SIZE, :HASH_SIZE] * _SCALE
    bits = low > np.median(low)
    return int(np.bitwise_or.reduce(_WEIGHTS[bits.reshape(-1)], initial=np.uint64(0)))


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def to_hex(h: int) -> str:
    return f"{h:016x}"


def from_hex(s: str) -> int:
    return int(s, 16)
