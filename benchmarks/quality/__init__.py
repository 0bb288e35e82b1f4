"""The quality benchmark: outpainting of held-out procedural scenes scored against their ground truth
(issue "A model trained here ..."; docs/quality.md)."""
