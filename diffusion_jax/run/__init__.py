"""The runtime that `main.py` runs: config validation, building an experiment, the train step and loop, the
sample/eval/export modes, data, checkpoints, meshes, logs, images and quality scoring.

It builds on the math in `diffusion_jax`, which never imports it. Import its modules by name
(`from diffusion_jax.run import trained`): this package imports none of them, so that loading a trained run
does not load the training loop.
"""
