"""CLIP tokenization from the model folder's own tokenizer files, with the `tokenizers` library (no torch)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from outpaint.core.errors import ModelError
from outpaint.core.geometry import TEXT_TOKENS


@dataclass(frozen=True)
class Tokens:
    ids: np.ndarray  # (77,) int64, BOS ... EOS, padded
    truncated: bool  # the prompt had more than 75 tokens and was cut (the rest is ignored by the model)


class ClipTokenizer:
    """Pads and truncates to 77 tokens exactly as diffusers' pipelines call CLIPTokenizer."""

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        path = folder / "tokenizer.json"
        if not path.is_file():
            raise ModelError(f"{path} is missing; re-export the model")
        self._tokenizer = Tokenizer.from_file(str(path))
        # A saved tokenizer.json may carry the padding/truncation of its last call; we do our own.
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        pad_token = config.get("pad_token") or "<|endoftext|>"
        if isinstance(pad_token, dict):  # older configs store AddedToken dicts
            pad_token = pad_token["content"]
        eos_token = config.get("eos_token") or "<|endoftext|>"
        if isinstance(eos_token, dict):
            eos_token = eos_token["content"]
        pad_id, eos_id = self._tokenizer.token_to_id(pad_token), self._tokenizer.token_to_id(eos_token)
        if pad_id is None or eos_id is None:
            raise ModelError(f"{path}: pad token {pad_token!r} or eos token {eos_token!r} is not in the vocabulary")
        self.pad_id, self.eos_id = pad_id, eos_id

    def __call__(self, text: str) -> Tokens:
        ids = self._tokenizer.encode(text).ids  # BOS ... EOS, by the tokenizer's post-processor
        truncated = len(ids) > TEXT_TOKENS
        if truncated:
            ids = [*ids[: TEXT_TOKENS - 1], self.eos_id]
        ids = ids + [self.pad_id] * (TEXT_TOKENS - len(ids))
        return Tokens(ids=np.asarray(ids, dtype=np.int64), truncated=truncated)
