"""Procedural scenes with ground truth beyond any crop, for training the small model and scoring
outpainting against what really lies outside the source (issue "A model trained here ...").

A scene is a pure function of its parameters, which are drawn from a seed: `Scene.render(view)`
draws any rectangle of the scene's unbounded plane at any resolution, so an outpainting case is
"render the canvas, keep a crop as the source, compare the rest". numpy only; it imports nothing
of outpaint's.
"""

from .scene import HELD_OUT_START, Scene, held_out_seeds, is_held_out, render, scene_from_seed, training_seeds
from .view import View

__all__ = ["HELD_OUT_START", "Scene", "View", "held_out_seeds", "is_held_out", "render", "scene_from_seed",
           "training_seeds"]
