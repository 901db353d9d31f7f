"""One-off: a FLUX pipeline with a full-width, 9-block transformer (1.92 B parameters) saved to /tmp/ovl/ckpt."""

import torch
from diffusers import FluxTransformer2DModel

from deployments.engines.random_models import tiny_flux_pipeline

pipe = tiny_flux_pipeline(seed=0)
with torch.device("cpu"):
    t = FluxTransformer2DModel(num_layers=3, num_single_layers=6, guidance_embeds=False).to(torch.bfloat16)
pipe.transformer = t
pipe.save_pretrained("/tmp/ovl/ckpt", safe_serialization=True)
print(sum(p.numel() for p in t.parameters()) / 1e9, "B params")
