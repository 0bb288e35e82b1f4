"""Weights through optimum's own ONNX exporter: the optimum bench peer's model and the optimum-folder tests'.

optimum lives in a virtualenv of its own (`make .venv-optimum/.installed`; constraints-optimum.txt says
why it cannot share ours), so its exporter runs as a subprocess: `python -m optimum.exporters.onnx`, the
module behind `optimum-cli export onnx`. The weights go to it as a diffusers folder written here, in the
layout SD 1.5's own repository has (what any optimum user starts from).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from outpaint.core.errors import ModelError

from .clip_vocab import write_clip_tokenizer_files
from .components import Components

PYTHON_ENV = "OUTPAINT_OPTIMUM_PYTHON"  # an interpreter with optimum-onnx[onnxruntime], instead of .venv-optimum
SOURCE_FILE = "source.json"  # beside an export made here: the weights' fingerprint, the export's seconds
TASK = "inpainting"  # the exported graphs are those of text-to-image; the task names the pipeline class


def optimum_python() -> Path:
    """The interpreter with optimum: $OUTPAINT_OPTIMUM_PYTHON, else .venv-optimum/ of this source tree."""
    configured = os.environ.get(PYTHON_ENV)
    if configured:
        return Path(configured)
    import outpaint

    return Path(outpaint.__file__).resolve().parent.parent / ".venv-optimum" / "bin" / "python"


def optimum_unavailable(python: Path | None = None) -> str | None:
    """Why optimum cannot run here, or None. Finds the modules without importing them (optimum.onnxruntime
    takes 10+ s to import)."""
    python = python or optimum_python()
    fix = f"run `make .venv-optimum/.installed` in the source tree, or set {PYTHON_ENV} to a Python with " \
          "optimum-onnx[onnxruntime] (constraints-optimum.txt)"
    if not python.is_file():
        return f"no optimum interpreter at {python}: {fix}"
    probe = ("import importlib.util as u, sys; "
             "sys.exit(0 if all(u.find_spec(m) for m in ('optimum.exporters.onnx', 'optimum.onnxruntime')) else 3)")
    completed = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        return f"{python} lacks optimum.exporters.onnx or optimum.onnxruntime: {fix}"
    return None


def write_diffusers_folder(components: Components, out: Path) -> None:
    """`components` as a diffusers StableDiffusionPipeline folder, as SD 1.5's repository lays it out.

    Two things transformers 5 writes differently from what optimum's transformers 4 reads: the CLIP text
    model's weights without their `text_model.` prefix (4.x would drop them all and initialise random
    ones), and the tokenizer as tokenizer.json alone (4.x's CLIPTokenizer needs vocab.json + merges.txt).
    Both are written the hub's way, which transformers 5 reads too.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from safetensors.torch import load_file, save_file
    from transformers import CLIPTokenizer

    pipe = StableDiffusionPipeline(
        vae=components.vae, text_encoder=components.text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(str(components.tokenizer_dir)), unet=components.unet,
        scheduler=DDIMScheduler.from_config(components.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(out), safe_serialization=True)
    write_clip_tokenizer_files(out / "tokenizer")
    for weights in (out / "text_encoder").glob("*.safetensors"):
        state = load_file(str(weights))
        if any(not key.startswith("text_model.") for key in state):
            state = {key if key.startswith("text_model.") else f"text_model.{key}": v for key, v in state.items()}
            save_file(state, str(weights), metadata={"format": "pt"})


def export_with_optimum(diffusers_dir: Path, out: Path, python: Path | None = None) -> float:
    """Run optimum's exporter on a diffusers folder into `out` (fp32, CPU); its seconds. Raises ModelError
    with the exporter's last lines when it fails."""
    python = python or optimum_python()
    if (problem := optimum_unavailable(python)) is not None:
        raise ModelError(problem)
    command = [str(python), "-m", "optimum.exporters.onnx", "--model", str(diffusers_dir), "--task", TASK,
               "--device", "cpu", str(out)]
    # Offline: everything is local, and a hub lookup would hang on a machine without network.
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - started
    if completed.returncode != 0 or not (out / "model_index.json").is_file():
        tail = " | ".join((completed.stderr or completed.stdout).strip().splitlines()[-4:])
        raise ModelError(f"optimum's exporter failed on {diffusers_dir} (exit {completed.returncode}): {tail}")
    return seconds


def ensure_optimum_export(components_factory, fingerprint: str, out: Path, python: Path | None = None) -> Path:
    """`out` holding optimum's export of the weights `fingerprint` names, made once and reused.

    `components_factory()` builds the Components only when an export is needed (seconds for the tiny
    model, a minute for full size). The diffusers folder in between is temporary (4 GB at full size).
    """
    record = out / SOURCE_FILE
    if record.is_file() and (out / "model_index.json").is_file():
        try:
            if json.loads(record.read_text()).get("fingerprint") == fingerprint:
                return out
        except ValueError:
            pass  # a damaged record: export again
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="outpaint-optimum-src-", dir=out.parent) as tmp:
        source = Path(tmp) / "diffusers"
        started = time.perf_counter()
        write_diffusers_folder(components_factory(), source)
        written = time.perf_counter() - started
        seconds = export_with_optimum(source, out, python)
    record.write_text(json.dumps({"fingerprint": fingerprint, "export_seconds": round(seconds, 1),
                                  "diffusers_folder_seconds": round(written, 1), "task": TASK}, indent=2) + "\n")
    return out
