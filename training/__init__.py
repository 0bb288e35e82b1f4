"""Training the small SD-1.5-architecture model on procedural scenes (issue "A model trained here ...").

`outpaint train` runs the stages in order, each resumable from its last checkpoint: the VAE on
rendered crops, its latent scaling factor measured, a latent cache of rendered views, then the
UNet and text encoder on those latents with SD 1.5's noise schedule. The result is a diffusers
folder that `outpaint export` takes exactly as it takes SD 1.5 weights. torch and diffusers only
(the `export` extra); never imported by the runtime.
"""
