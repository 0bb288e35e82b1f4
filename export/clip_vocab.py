"""The CLIP BPE vocabulary, rebuilt from OpenAI's `bpe_simple_vocab_16e6.txt.gz`.

Random-weight models still need the real tokenizer. No hub is reachable here, so the vocabulary
is rebuilt the way OpenAI's `simple_tokenizer.py` builds it, from the BPE merges file that ships
inside PyPI packages (open_clip_torch). The result is the exact vocab.json / merges.txt of
`openai/clip-vit-large-patch14` (49408 tokens).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

from outpaint.core.errors import ModelError

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
_BPE_MERGES = 49152 - 256 - 2  # OpenAI's simple_tokenizer keeps this many merges
_PACKAGES_SHIPPING_BPE = ("open_clip", "clip")


def find_bpe_file() -> Path:
    """Locate the BPE merges file: $OUTPAINT_CLIP_BPE, or inside an installed package.

    Packages are located with find_spec, never imported: open_clip's import pulls torchvision.
    """
    env = os.environ.get("OUTPAINT_CLIP_BPE")
    if env:
        path = Path(env)
        if not path.is_file():
            raise ModelError(f"OUTPAINT_CLIP_BPE={env} is not a file")
        return path
    for package in _PACKAGES_SHIPPING_BPE:
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(location) / BPE_FILE
            if candidate.is_file():
                return candidate
    raise ModelError(
        f"the CLIP vocabulary file {BPE_FILE} was not found; `pip install --no-deps open_clip_torch` "
        "ships it, or set OUTPAINT_CLIP_BPE to its path"
    )


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode character table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def clip_vocab_and_merges(bpe_path: Path | None = None) -> tuple[dict[str, int], list[str]]:
    """Return (token -> id, merges as "a b" lines) exactly as OpenAI's CLIP tokenizer builds them."""
    with gzip.open(bpe_path or find_bpe_file()) as handle:
        lines = handle.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _BPE_MERGES + 1]]
    tokens = list(bytes_to_unicode().values())
    tokens = tokens + [t + "</w>" for t in tokens]
    tokens += ["".join(pair) for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    if len(tokens) != VOCAB_SIZE:
        raise ModelError(f"rebuilt CLIP vocabulary has {len(tokens)} tokens, expected {VOCAB_SIZE}")
    return {token: i for i, token in enumerate(tokens)}, [" ".join(pair) for pair in merges]


def write_clip_tokenizer_files(folder: Path) -> None:
    """Write a diffusers-style tokenizer/ folder (as SD 1.5 ships it) from the rebuilt vocabulary."""
    import json

    vocab, merges = clip_vocab_and_merges()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {**special, "model_max_length": 77, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
