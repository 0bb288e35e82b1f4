"""Dependencies flow one way (docs/architecture.md): every `outpaint.*` import, lazy ones included,
goes from a layer to one it builds on. The runtime never imports the exporter."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# layer -> the layers its modules may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "scenes": set(),  # procedural scenes with ground truth: numpy only
    "kernels": {"core"},
    "engine": {"core", "kernels"},
    # The TensorRT builder loads what it built with the runtime's TensorRT helpers.
    "export": {"core", "kernels", "engine"},
    "server": {"core", "engine"},
    "benchmarks": {"core", "kernels", "engine", "export", "server", "scenes"},
    # Trains the small model; writes a diffusers folder that `export` reads like any other. The
    # inpainting stage takes the engine's own masks, blanking and latent mask, so the 9-channel UNet
    # trains on exactly what the runtime feeds it (the engine never imports training).
    "training": {"core", "engine", "export", "scenes"},
}


def outpaint_imports(path: Path) -> set[tuple[str, int]]:
    """(layer, line) of every absolute `outpaint.<layer>` import in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "outpaint" and len(parts) > 1:
                found.add((parts[1], node.lineno))
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_the_layers_below_it(layer):
    violations = [
        f"{path.relative_to(ROOT)}:{line} imports outpaint.{target}"
        for path in sorted((ROOT / layer).rglob("*.py"))
        for target, line in sorted(outpaint_imports(path))
        if target != layer and target not in ALLOWED[layer]
    ]
    assert not violations, f"{layer} may import only {sorted(ALLOWED[layer])}: " + "; ".join(violations)


def test_relative_imports_stay_inside_their_layer():
    """`from ..x import` must not climb out of a top-level folder (it would dodge the check above)."""
    for layer in ALLOWED:
        for path in (ROOT / layer).rglob("*.py"):
            depth = len(path.relative_to(ROOT / layer).parts) - 1  # 0 for a module at the layer's top
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.level:
                    assert node.level - 1 <= depth, f"{path.relative_to(ROOT)}:{node.lineno} leaves {layer}/"


def test_the_package_links_every_layer():
    """outpaint/<layer> is the top-level folder itself, so tools resolve `outpaint.<layer>` to it."""
    for layer in ALLOWED:
        link = ROOT / "outpaint" / layer
        assert link.is_symlink() and link.resolve() == (ROOT / layer).resolve(), link


# Ray Serve is an optional extra (`outpaint[ray]`): only these modules may import it, and nothing
# imports them but the CLI's lazy `serve-ray` command and the tests.
RAY_MODULES = {"server/ray_serve.py", "server/ray_proxy.py"}


def _imports_ray(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "ray" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "ray":
            return True
    return False


def test_only_the_ray_modules_import_ray():
    offenders = [
        str(path.relative_to(ROOT))
        for layer in [*ALLOWED, "outpaint"]
        for path in sorted((ROOT / layer).rglob("*.py"))
        if not path.is_symlink() and (layer != "outpaint" or path.parent == ROOT / "outpaint")
        and str(path.relative_to(ROOT)) not in RAY_MODULES and _imports_ray(path)
    ]
    assert not offenders, f"only {sorted(RAY_MODULES)} may import ray (an optional extra): {offenders}"
