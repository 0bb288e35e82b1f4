"""`outpaint export`: pick the source, export with a progress bar."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tqdm import tqdm

from outpaint.core.graphs import ATTENTION_GRAPHS, FEATURE_CACHE_GRAPHS, GRAPHS


def export_model(
    source: str | None,
    out: Path,
    *,
    random: str | None = None,
    seed: int = 0,
    unet_in_channels: int = 4,
    config: Path | None = None,
    feature_cache: bool = True,
    attention_twins: bool = True,
):
    from .onnx_export import export_components

    graphs = (*GRAPHS, *FEATURE_CACHE_GRAPHS, *(ATTENTION_GRAPHS if attention_twins else ()))
    if not feature_cache:
        graphs = tuple(g for g in graphs if g not in FEATURE_CACHE_GRAPHS)
    with tqdm(total=len(graphs), desc="export", unit="graph") as bar:
        bar.set_postfix_str("loading weights")
        with tempfile.TemporaryDirectory(prefix="outpaint-src-") as workdir:
            if random:
                from .random_models import build_random_components

                components = build_random_components(random, seed=seed, unet_in_channels=unet_in_channels,
                                                     workdir=Path(workdir))
            else:
                from .sources import load_components

                components = load_components(source, config=config)

            def progress(graph: str, status: str) -> None:
                bar.set_postfix_str(f"{graph}: {status}")
                if status in ("done", "skipped"):
                    bar.update(1)

            return export_components(components, out, progress=progress, feature_cache=feature_cache,
                                     attention_twins=attention_twins)
