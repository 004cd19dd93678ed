"""The OpenCV pHash against the imagehash reference: same bits layout, near-identical hashes, same decisions."""

from __future__ import annotations

import imagehash
import numpy as np
from PIL import Image

from frugal.devkit.vision import corpus
from frugal.devkit.vision.evaluation import i420_frame
from frugal.vision.frames import FrameLimits, luma_thumbnail
from frugal.vision.phash import from_hex, hamming, phash, to_hex


def reference(rgb: np.ndarray) -> int:
    h, w = rgb.shape[:2]
    return int(str(imagehash.phash(Image.frombytes("RGB", (w, h), rgb.tobytes()))), 16)


def fast(rgb: np.ndarray) -> int:
    f = corpus.CorpusFrame("x", 0, 0, rgb, False)
    return phash(luma_thumbnail(i420_frame(f), FrameLimits()).pixels)


def test_hex_and_hamming() -> None:
    assert to_hex(0) == "0" * 16 and to_hex(2**64 - 1) == "f" * 16
    assert from_hex(to_hex(0xDEADBEEF12345678)) == 0xDEADBEEF12345678
    assert hamming(0b1011, 0b0001) == 2 and hamming(2**64 - 1, 0) == 64


def test_bit_layout_matches_imagehash_on_a_smooth_image() -> None:
    # Smooth, high-contrast structure: no resampling ambiguity, the two hashes must agree (almost) bit for bit.
    yy, xx = np.mgrid[0:360, 0:640]
    g = (127 + 100 * np.sin(xx / 90.0) * np.cos(yy / 70.0)).astype(np.uint8)
    rgb = np.stack([g, g, g], axis=-1)
    a, b = fast(rgb), reference(rgb)
    assert hamming(a, b) <= 2, (to_hex(a), to_hex(b))
    rgb2 = np.ascontiguousarray(rgb[::-1, ::-1] // 2 + 60)
    c, d = fast(rgb2), reference(rgb2)
    assert hamming(c, d) <= 2
    # both see the two images as different
    assert hamming(a, c) > 10 and hamming(b, d) > 10


def test_decisions_agree_with_imagehash_on_the_corpus() -> None:
    fast_h: list[int] = []
    ref_h: list[int] = []
    for scenario in corpus.SCENARIOS:
        for f in corpus.generate(scenario, 320, 180, 4.0, seed=5):
            if f.index % 6 == 0:
                fast_h.append(fast(f.rgb))
                ref_h.append(reference(f.rgb))
    bits = [hamming(a, b) for a, b in zip(fast_h, ref_h, strict=True)]
    print(f"mean bit difference {np.mean(bits):.2f}, max {max(bits)}")
    assert np.mean(bits) <= 2.0 and max(bits) <= 10
    agree = total = 0
    n = len(fast_h)
    for i in range(n):
        for j in range(i):
            total += 1
            agree += (hamming(fast_h[i], fast_h[j]) > 10) == (hamming(ref_h[i], ref_h[j]) > 10)
    assert total > 5000
    print(f"decision agreement (distance > 10) on {total} pairs: {agree / total:.2%}")
    assert agree / total >= 0.97
