"""The runtime: canvas, tokenizer, schedulers, the denoising loop and the pipeline."""
