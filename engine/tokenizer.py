"""CLIP tokenization from the model folder's own tokenizer files, with the `tokenizers` library (no torch)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from outpaint.core.errors import ModelError
from outpaint.core.geometry import TEXT_TOKENS

# Unicode's White_Space, the set the tokenizer's normalizer collapses (`\s+` -> " ", Rust regex) and its
# pre-tokenizer drops. Python's own \s also matches U+001C..U+001F, which CLIP tokenizes.
_WHITESPACE_RUN = re.compile("[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]{2,}")


# CLIP's pre-tokenizer split (the `pat` of OpenAI's simple_tokenizer.py, as transformers' CLIPConverter writes it).
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _token(config: dict, key: str, default: str) -> str:
    value = config.get(key) or default
    return value["content"] if isinstance(value, dict) else value  # older configs store AddedToken dicts


def clip_tokenizer_from_bpe_files(folder: Path, config: dict):
    """The fast CLIP tokenizer built from the slow tokenizer's vocab.json and merges.txt (what optimum
    exports and SD 1.5's own repository ship), exactly as transformers' CLIPConverter builds it: the
    same normalizer, pre-tokenizer, BPE with the `</w>` word suffix and BOS/EOS post-processor, so the
    ids equal those of a tokenizer.json made from the same files (tests/test_optimum_folder.py)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    bos = _token(config, "bos_token", "<|startoftext|>")
    eos = _token(config, "eos_token", "<|endoftext|>")
    unk = _token(config, "unk_token", "<|endoftext|>")
    tokenizer = Tokenizer(BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt"), unk_token=unk,
                                        continuing_subword_prefix="", end_of_word_suffix="</w>", fuse_unk=False))
    tokenizer.normalizer = normalizers.Sequence(  # type: ignore[assignment]  # the stubs lack the setters
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([  # type: ignore[assignment]
        pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()  # type: ignore[assignment]
    bos_id, eos_id = tokenizer.token_to_id(bos), tokenizer.token_to_id(eos)
    if bos_id is None or eos_id is None:
        raise ModelError(f"{folder}/vocab.json lacks the BOS {bos!r} or EOS {eos!r} token of tokenizer_config.json")
    tokenizer.post_processor = processors.RobertaProcessing(  # type: ignore[assignment]
        (eos, eos_id), (bos, bos_id), trim_offsets=False, add_prefix_space=False)
    tokenizer.add_special_tokens([bos, eos])
    return tokenizer


@dataclass(frozen=True)
class Tokens:
    ids: np.ndarray  # (77,) int64, BOS ... EOS, padded
    truncated: bool  # the prompt had more than 75 tokens and was cut (the rest is ignored by the model)
    chars_read: int | None = None  # set when the text was cut before tokenizing: the characters kept


class ClipTokenizer:
    """Pads and truncates to 77 tokens exactly as diffusers' pipelines call CLIPTokenizer."""

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        path = folder / "tokenizer.json"
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        if path.is_file():
            self._tokenizer = Tokenizer.from_file(str(path))
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            self._tokenizer = clip_tokenizer_from_bpe_files(folder, config)  # an optimum export's tokenizer/
        else:
            raise ModelError(f"{path} is missing (and so are vocab.json + merges.txt beside it); re-export the model")
        # A saved tokenizer.json may carry the padding/truncation of its last call; we do our own.
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
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
        # The longest vocabulary entry, in byte-level symbols (one per UTF-8 byte; CLIP's: 32, eight
        # 4-byte emoji). A token covers at most that many bytes, hence characters, of normalized text.
        longest = max(len(token.removesuffix("</w>")) for token in self._tokenizer.get_vocab())
        # The 75 tokens between BOS and EOS span at most 75 x longest characters of normalized text,
        # plus one collapsed space between tokens. Normalization (NFC composes up to 4 characters into
        # one of 3 bytes; lower-casing only lengthens) at most doubles that in the text we cut; another
        # 2x keeps the cut far beyond the last token kept, so a word cut there cannot change it.
        # CLIP: 4 x 77 x 33 = 10164 characters, a few milliseconds of tokenizing.
        self.max_chars = 4 * TEXT_TOKENS * (longest + 1)

    def bound(self, text: str) -> tuple[str, int | None]:
        """The text cut to what its first 77 tokens can come from, and how many characters were kept if cut.

        Tokenizing all of a 15 MB prompt took 69 s and 3.7 GB (the tokenizer keeps offsets for every
        character) to keep 77 tokens. Whitespace runs collapse to one space first, exactly as the
        tokenizer's normalizer does (NFC leaves white space alone), so padding costs nothing and
        changes nothing. Then at most `max_chars` characters are kept: more than 77 tokens can span.
        """
        if len(text) <= self.max_chars:
            return text, None
        collapsed = _WHITESPACE_RUN.sub(" ", text)
        if len(collapsed) <= self.max_chars:
            return collapsed, None
        return collapsed[: self.max_chars], self.max_chars

    def __call__(self, text: str) -> Tokens:
        text, chars_read = self.bound(text)
        ids = self._tokenizer.encode(text).ids  # BOS ... EOS, by the tokenizer's post-processor
        truncated = len(ids) > TEXT_TOKENS
        if truncated:
            ids = [*ids[: TEXT_TOKENS - 1], self.eos_id]
        ids = ids + [self.pad_id] * (TEXT_TOKENS - len(ids))
        return Tokens(ids=np.asarray(ids, dtype=np.int64), truncated=truncated, chars_read=chars_read)
