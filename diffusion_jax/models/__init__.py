"""The denoisers: `unet.UNet` (the DDPM network), `mlp.MLPDenoiser` (2-D toys), and their `layers`."""
