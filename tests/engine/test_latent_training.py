"""The VAE and text-to-image objectives run on the shared training loop and save loadable models."""

import json
import math

import numpy as np
import pytest
import torch

from engine.builtin.recipes import sd_setup
from engine.training.objectives.latent import VaeReconstruction
from engine.sampling.preview import LATENT_RGB_FILE, LatentRGBPreviewer
from engine.training.data import attach_transform, load_image_data
from engine.training.loop import iter_train
from engine.training.request import TrainDone, TrainRequest, TrainStep


def run(request, tmp_path, objective):
    events = list(iter_train(request, models_dir=tmp_path, data_dir=tmp_path, device="cpu", objective=objective))
    assert isinstance(events[-1], TrainDone) and not events[-1].stopped
    losses = [loss for e in events if isinstance(e, TrainStep) for loss in e.losses]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    return events[-1].path, losses


def test_vae_then_text_to_image_on_the_shared_loop(tmp_path):
    from diffusers import StableDiffusionPipeline

    common = dict(data="digits", resolution=32, batch_size=8, random_flip=False, lr_warmup_steps=0, log_every=1,
                  save_every=0, sample_every=0, learning_rate=1e-3)
    vae_dir, vae_losses = run(TrainRequest(run_name="vae", max_steps=6, **common), tmp_path, VaeReconstruction)
    assert vae_losses[-1] < vae_losses[0]  # reconstruction improves from a random start
    sd_dir, _ = run(TrainRequest(run_name="sd", max_steps=3, use_ema=True, **common), tmp_path,
                    sd_setup(tmp_path / "vae"))
    pipe = StableDiffusionPipeline.from_pretrained(sd_dir, local_files_only=True)
    # Fitted to this VAE's latents as SD's 0.18215 was to SD's: 1 / their std over (up to) 512 training
    # images, so that the latents the UNet learns on have unit std.
    scale = pipe.vae.config.scaling_factor
    assert isinstance(scale, float) and math.isfinite(scale) and 0.01 < scale < 100
    data = load_image_data("digits", tmp_path)
    attach_transform(data, 32)
    images = torch.stack(data.dataset[:512]["images"]).expand(-1, 3, -1, -1)  # (512, 3, 32, 32), grey as RGB
    with torch.no_grad():
        latents = pipe.vae.encode(images).latent_dist.mean * scale  # (512, 4, 8, 8)
    assert abs(latents.std().item() - 1.0) < 1e-3, scale
    image = pipe("the number 3", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (32, 32, 3)
    fitted = json.loads((tmp_path / "sd" / LATENT_RGB_FILE).read_text())
    previewer = LatentRGBPreviewer.for_model(tmp_path / "sd", 4)
    assert np.allclose(previewer.matrix, np.array(fitted["matrix"], dtype=np.float32))
    assert np.abs(previewer.matrix).max() > 0.05  # fitted in the loop's (scaled) latent space
