"""What a diffusion objective's loss gives the loop besides the number it steps on."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class LossTerms:
    """A diffusion objective's loss with what the loop charts beside it: each image's loss and its timestep."""

    loss: torch.Tensor  # () what the optimizer steps on
    per_sample: torch.Tensor  # (B,) each image's loss, detached
    timesteps: torch.Tensor  # (B,) the timestep each image was noised to
    num_train_timesteps: int  # T: the timesteps run 0..T-1


def mse_terms(prediction: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor, noise_scheduler,
              snr_gamma: float = 0.0) -> LossTerms:
    """Mean squared error of a batch, as diffusers' training scripts take it: plain, or with ``snr_gamma`` > 0
    the Min-SNR weighting (Hang et al. 2023, eq. 7): each image's MSE times min(SNR(t), gamma) / SNR(t) for an
    epsilon model (/ (SNR(t) + 1) for v-prediction). ``per_sample`` is the unweighted MSE either way."""
    per_sample = (prediction.detach().float() - target.float()).pow(2).flatten(1).mean(1)  # (B,)
    num_train_timesteps = noise_scheduler.config.num_train_timesteps
    if not snr_gamma:
        loss = torch.nn.functional.mse_loss(prediction.float(), target.float())
        return LossTerms(loss, per_sample, timesteps, num_train_timesteps)
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)  # (B,)
    weights = torch.clamp(snr, max=snr_gamma)
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        weights = weights / snr
    elif kind == "v_prediction":
        weights = weights / (snr + 1)
    loss = torch.nn.functional.mse_loss(prediction.float(), target.float(), reduction="none")
    loss = (loss.flatten(1).mean(1) * weights).mean()
    return LossTerms(loss, per_sample, timesteps, num_train_timesteps)
