"""Graph runners behind one small protocol: a backend turns a model folder's ONNX files into sessions."""

from __future__ import annotations

from .base import GraphRunner, check_feeds

__all__ = ["GraphRunner", "check_feeds"]
