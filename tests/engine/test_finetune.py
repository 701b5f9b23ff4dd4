"""Fine-tuning an unconditional model from the page's "Start from", and the charts every run feeds:
the loss by timestep bucket and the learning rate."""

import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.errors import InputError
from engine.models.registry import BUILTINS
from engine.training import checkpoints as ckpt
from engine.training.loop import NUM_BUCKETS, bucket_edges
from engine.training.request import TrainDone, TrainRequest, TrainStarted, TrainStep, resume_request
from tests.training_setups import train_events, write_digits

DDPM = BUILTINS["digits-ddpm"].folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """``digits32``: 24 of scikit-learn's digits as grey 32 px PNGs, the data digits-ddpm was trained on."""
    root = tmp_path_factory.mktemp("data")
    write_digits(root / "digits32", 24)
    return root


def request(**kw) -> TrainRequest:
    settings = dict(data="digits32", start_from="digits-ddpm", resolution=32, batch_size=8, max_steps=4,
                    learning_rate=1e-4, lr_warmup_steps=0, use_ema=False, log_every=1, save_every=0, sample_every=0,
                    first_sample_step=0, seed=3)
    return TrainRequest(**{**settings, **kw})


def losses_of(events):
    return [x for e in events if isinstance(e, TrainStep) for x in e.losses]


@torch.no_grad()
def pretrained_loss(data_dir, n: int = 96) -> float:
    """digits-ddpm's noise-prediction MSE on the folder's images, computed with diffusers alone."""
    from diffusers import DDPMScheduler, UNet2DModel
    from PIL import Image

    unet = UNet2DModel.from_pretrained(DDPM, subfolder="unet").eval()
    scheduler = DDPMScheduler.from_pretrained(DDPM, subfolder="scheduler")
    images = torch.stack([torch.from_numpy(np.asarray(Image.open(p), dtype=np.float32)) / 127.5 - 1
                          for p in sorted((data_dir / "digits32").glob("*.png"))])[:, None]  # (24, 1, 32, 32)
    generator = torch.Generator().manual_seed(0)
    x0 = images[torch.randint(0, len(images), (n,), generator=generator)]
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.randint(0, 1000, (n,), generator=generator)
    prediction = unet(scheduler.add_noise(x0, noise, t), t).sample
    return float(torch.nn.functional.mse_loss(prediction, noise))


def test_fine_tune_starts_at_the_pretrained_models_loss_not_at_scratchs(tmp_path, data_dir):
    from diffusers import DDPMPipeline

    # 1. The same data, steps and seed from digits-ddpm and from a new UNet of the same shape.
    tuned = train_events(request(run_name="tuned"), tmp_path, data_dir)
    scratch = train_events(request(run_name="scratch", start_from="scratch", preset="digits"), tmp_path, data_dir)
    reference = pretrained_loss(data_dir)
    start_tuned, start_scratch = np.mean(losses_of(tuned)), np.mean(losses_of(scratch))
    assert 0.5 * reference < start_tuned < 2 * reference, (start_tuned, reference)
    assert start_scratch > 10 * reference, (start_scratch, reference)
    assert tuned[0].info["start_from"] == "digits-ddpm" and tuned[0].info["channels"] == 1

    # 2. The checkpoint is a DDPMPipeline with the base model's UNet config and scheduler config, new weights.
    done = tuned[-1]
    assert isinstance(done, TrainDone) and done.path == str(tmp_path / "tuned")
    pipe = DDPMPipeline.from_pretrained(done.path, local_files_only=True)
    base = DDPMPipeline.from_pretrained(DDPM, local_files_only=True)
    drop = ("_name_or_path", "_diffusers_version", "_use_default_values")
    assert {k: v for k, v in pipe.unet.config.items() if k not in drop} == \
        {k: v for k, v in base.unet.config.items() if k not in drop}
    assert {k: v for k, v in pipe.scheduler.config.items() if k not in drop} == \
        {k: v for k, v in base.scheduler.config.items() if k not in drop}
    before, after = base.unet.state_dict(), pipe.unet.state_dict()
    assert not all(torch.equal(before[k], after[k]) for k in before)
    assert max((before[k] - after[k]).abs().max().item() for k in before) < 0.01  # near the base after 4 steps


def test_resumed_fine_tune_with_ema_is_exact(tmp_path, data_dir):
    base = dict(max_steps=6, use_ema=True, lr_warmup_steps=2)
    straight = train_events(request(run_name="straight", **base), tmp_path, data_dir)
    first = train_events(request(run_name="stopped", **base), tmp_path, data_dir, cancel_at=3)
    assert first[-1].stopped and first[-1].step == 3
    resumed = train_events(resume_request(tmp_path, "stopped"), tmp_path, data_dir)
    assert resumed[0].start_step == 3 and resumed[0].info["start_from"] == "digits-ddpm"
    assert losses_of(resumed) == pytest.approx(losses_of(straight)[3:], rel=1e-5)
    for name in ("unet/diffusion_pytorch_model.safetensors", "trainer/unet.safetensors"):
        a, b = load_file(tmp_path / "straight" / name), load_file(tmp_path / "stopped" / name)
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), name


@pytest.mark.parametrize("change, message", [
    (dict(resolution=16), "resolution 16 differs from 'digits-ddpm''s 32 px: a fine-tune trains at the model's "
                          "own resolution, which its UNet was trained for; set resolution to 32"),
    (dict(start_from="digits-sd"), "cannot start from 'digits-sd': it is a StableDiffusionPipeline; a fine-tune "
                                   "needs an unconditional model (DDPMPipeline, DDIMPipeline, PNDMPipeline). LoRA "
                                   "(method 'lora') trains adapters on a text-to-image model"),
    (dict(start_from="no-such-model"), "cannot start from 'no-such-model': unknown model 'no-such-model': not a "
                                       "built-in (digits-sd, digits-ddpm), not a folder or .safetensors file under "
                                       "the models dir (--models-dir), and not a hub id like 'owner/name'"),
])
def test_a_base_that_cannot_be_fine_tuned_is_refused_before_anything_is_written(tmp_path, data_dir, change, message):
    with pytest.raises(InputError, match="^" + re.escape(message) + "$"):
        train_events(request(run_name="refused", **change), tmp_path, data_dir)
    assert list(tmp_path.iterdir()) == []


def test_loss_by_timestep_bucket_and_each_steps_learning_rate(tmp_path, data_dir):
    from diffusers.optimization import get_cosine_schedule_with_warmup

    req = request(run_name="charts", start_from="scratch", preset="tiny", resolution=16, max_steps=3, log_every=1,
                  learning_rate=1e-3, lr_warmup_steps=2)
    events = train_events(req, tmp_path, data_dir)
    started, steps = events[0], [e for e in events if isinstance(e, TrainStep)]
    assert isinstance(started, TrainStarted)
    assert started.bucket_edges == tuple(range(0, 1001, 100)) == bucket_edges(1000)
    assert bucket_edges(1001) == (0, 101, 201, 301, 401, 501, 601, 701, 801, 901, 1001)

    # 1. Each report's filled buckets are those of the timesteps its images drew: the run's generator (seed
    #    + 7919) draws each step's noise (B, 3, 16, 16), then its timesteps (B,).
    generator = torch.Generator().manual_seed(req.seed + 7919)
    for event in steps:
        torch.randn((8, 3, 16, 16), generator=generator)
        t = torch.randint(0, 1000, (8,), generator=generator)
        assert len(event.bucket_loss) == NUM_BUCKETS
        assert {i for i, b in enumerate(event.bucket_loss) if b is not None} == set((t // 100).tolist())
        assert all(b > 0 for b in event.bucket_loss if b is not None)

    # 2. Every step's learning rate: diffusers' cosine schedule with warm-up.
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    schedule = get_cosine_schedule_with_warmup(optimizer, 2, 3)
    expected = []
    for _ in range(3):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert [lr for e in steps for lr in e.lrs] == expected
    state = ckpt.read_state(tmp_path / "charts")
    assert state["lr_history"] == expected
    assert [tuple(v) for _, v in state["bucket_history"]] == [e.bucket_loss for e in steps]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weighting_is_the_papers(prediction_type):
    """Hang et al. 2023, eq. 7, as diffusers' train_text_to_image_lora.py applies it, against SNR(t) = a_bar /
    (1 - a_bar) computed here from the scheduler's alphas_cumprod."""
    from diffusers import DDPMScheduler

    from engine.training.objectives.terms import mse_terms

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type=prediction_type)
    generator = torch.Generator().manual_seed(0)
    prediction, target = torch.randn((6, 4, 8, 8), generator=generator), torch.randn((6, 4, 8, 8), generator=generator)
    timesteps = torch.tensor([0, 10, 100, 400, 800, 999])
    a_bar = scheduler.alphas_cumprod[timesteps]
    snr = a_bar / (1 - a_bar)
    mse = ((prediction - target) ** 2).mean(dim=(1, 2, 3))  # (6,)
    denominator = snr if prediction_type == "epsilon" else snr + 1
    weighted = mse_terms(prediction, target, timesteps, scheduler, snr_gamma=5.0)
    assert weighted.loss.item() == pytest.approx((mse * torch.clamp(snr, max=5.0) / denominator).mean().item(),
                                                 rel=1e-5)
    plain = mse_terms(prediction, target, timesteps, scheduler)
    assert plain.loss.item() == pytest.approx(mse.mean().item(), rel=1e-6)
    assert torch.allclose(weighted.per_sample, mse) and torch.allclose(plain.per_sample, mse)
    assert abs(weighted.loss.item() - plain.loss.item()) > 0.1 * plain.loss.item()  # the weights do something
