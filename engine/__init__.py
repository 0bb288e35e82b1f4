"""The runtime: canvas, tokenizer, samplers, the denoising loop and the pipeline."""
