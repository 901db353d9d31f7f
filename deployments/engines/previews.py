"""Previews of a Flux image while it is denoised: cheap enough to stream, no VAE decode.

After each step the model's estimate of the finished image is x0 = x' - sigma' * v, where x' is the
latent after the step, sigma' its noise level and v the velocity the step moved along
((x' - x) / (sigma' - sigma), x being the latent the transformer was given). A preview is x0 turned
into colours by a linear map from the latent channels (16 in FLUX's VAE) to RGB, at the latent's
resolution (1/8 of the image's side). The map is fitted to the pipeline's own VAE once, by least
squares on smooth random colour fields it encodes, so it holds for real weights and random ones alike.
"""

import numpy as np
import torch
from diffusers import FluxPipeline


class LatentPreviewer:
    """x0 estimates as uint8 RGB previews, for the steps of one pipeline call that asked for them."""

    def __init__(self, pipe: FluxPipeline, seed: int = 0) -> None:
        self.pipe = pipe
        self.rgb_map = self._fit_rgb_map(seed)  # [channels + 1, 3]: the latent's channels and a bias -> RGB in [-1, 1]
        self.step_input: torch.Tensor | None = None  # the latent the transformer was last given

    @torch.inference_mode()
    def _fit_rgb_map(self, seed: int) -> torch.Tensor:
        vae = self.pipe.vae
        device = next(vae.parameters()).device
        generator = torch.Generator("cpu").manual_seed(seed)
        # Smooth colour fields: 8 images of 128x128 from 8x8 random colours, bilinear; in [-1, 1] as the VAE expects.
        coarse = torch.rand(8, 3, 8, 8, generator=generator) * 2 - 1
        images = torch.nn.functional.interpolate(coarse, size=(128, 128), mode="bilinear", align_corners=False)
        latents = vae.encode(images.to(device, vae.dtype)).latent_dist.mode().float().cpu()
        latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor  # the space the transformer works in
        targets = torch.nn.functional.avg_pool2d(images, self.pipe.vae_scale_factor)
        inputs = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        inputs = torch.cat([inputs, torch.ones(len(inputs), 1)], dim=1)
        return torch.linalg.lstsq(inputs, targets.permute(0, 2, 3, 1).reshape(-1, 3)).solution

    def remember_step_input(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """A forward pre-hook for the transformer: keeps the latent of the step about to run."""
        self.step_input = kwargs["hidden_states"]

    @torch.inference_mode()
    def preview(self, latents: torch.Tensor, height: int, width: int) -> np.ndarray:
        """uint8 [N, height / 8, width / 8, 3] previews of packed `latents`, just after a scheduler step."""
        scheduler = self.pipe.scheduler
        sigma, sigma_next = scheduler.sigmas[scheduler.step_index - 1], scheduler.sigmas[scheduler.step_index]
        velocity = (latents.float() - self.step_input.float()) / (sigma_next - sigma)
        estimate = latents.float() - sigma_next * velocity
        unpacked = self.pipe._unpack_latents(estimate, height, width, self.pipe.vae_scale_factor)  # [N, 16, h, w]
        channels = unpacked.permute(0, 2, 3, 1)
        rgb = channels @ self.rgb_map[:-1].to(channels.device) + self.rgb_map[-1].to(channels.device)
        return ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
