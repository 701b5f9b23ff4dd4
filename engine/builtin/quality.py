"""Quality figures of the built-in digit models, scored by :class:`engine.digits.DigitClassifier`.

    python -m engine.builtin evaluate          # the README's figures
    python -m engine.builtin evaluate --quick  # the smaller sample make test checks
"""

from __future__ import annotations

import numpy as np
import torch

from engine.builtin.digits import class_report, classifier, prompt_for
from engine.sampling.schedulers import make_scheduler

SD_STEPS = 25


def sd_samples(pipe, digit: int, n: int, *, guidance_scale: float, scheduler: str, seed: int,
               batch: int = 50) -> np.ndarray:
    """(n, H, W, 3) uint8 from "a handwritten digit <k>", ``num_inference_steps`` 25."""
    original, out = pipe.scheduler, []
    pipe.scheduler = make_scheduler(scheduler, original.config)
    try:
        for start in range(0, n, batch):
            k = min(batch, n - start)
            generator = torch.Generator("cpu").manual_seed(seed + 1000 * digit + start)
            images = pipe([prompt_for(digit)] * k, num_inference_steps=SD_STEPS, guidance_scale=guidance_scale,
                          generator=generator, output_type="np").images
            out.append((images * 255).round().astype(np.uint8))
    finally:
        pipe.scheduler = original
    return np.concatenate(out)


def evaluate_sd(pipe, *, per_class: int, guidance_scale: float, scheduler: str, seed: int = 0) -> dict:
    """Per-digit share of samples the classifier reads as the prompted digit."""
    images, expected = [], []
    for digit in range(10):
        images.append(sd_samples(pipe, digit, per_class, guidance_scale=guidance_scale, scheduler=scheduler,
                                 seed=seed))
        expected += [digit] * per_class
    report = class_report(classifier().score(np.concatenate(images)), np.array(expected))
    report.update(guidance_scale=guidance_scale, scheduler=scheduler, steps=SD_STEPS)
    return report


def evaluate_ddpm(pipe, *, n: int, scheduler: str, num_inference_steps: int, seed: int = 0,
                  batch: int = 500) -> dict:
    """Class shares of ``n`` unconditional samples and the share classified with a margin."""
    from diffusers import DDPMPipeline

    sampler = DDPMPipeline(unet=pipe.unet, scheduler=make_scheduler(scheduler, pipe.scheduler.config))
    sampler.set_progress_bar_config(disable=True)
    images = []
    for start in range(0, n, batch):
        k = min(batch, n - start)
        out = sampler(batch_size=k, num_inference_steps=num_inference_steps, output_type="np",
                      generator=torch.Generator("cpu").manual_seed(seed + start)).images
        images.append((out * 255).round().astype(np.uint8))
    report = class_report(classifier().score(np.concatenate(images)))
    report.update(scheduler=scheduler, steps=num_inference_steps)
    return report


def load_builtin(name: str, device: str = "cpu"):
    from engine.models.devices import resolve_device
    from engine.models.registry import ModelRegistry

    kind = "txt2img" if name.endswith("-sd") else "unconditional"
    registry = ModelRegistry("/nonexistent-models-dir", resolve_device(device))
    return registry.load(name, kind)


def print_report(*, quick: bool = False, device: str = "cpu") -> dict:
    """The README's table: digits-sd at the default guidance and at 1; digits-ddpm with DDIM 50 and DDPM."""
    from engine.sampling.txt2img import Txt2ImgRequest

    torch.set_grad_enabled(False)
    defaults = Txt2ImgRequest(prompt="")
    per_class, n = (10, 100) if quick else (50, 500)
    sd = load_builtin("digits-sd", device)
    ddpm = load_builtin("digits-ddpm", device)
    results = {
        "classifier_held_out_accuracy": classifier().held_out_accuracy,
        "sd_default": evaluate_sd(sd, per_class=per_class, guidance_scale=defaults.guidance_scale,
                                  scheduler=defaults.scheduler),
        "sd_no_guidance": evaluate_sd(sd, per_class=per_class, guidance_scale=1.0, scheduler=defaults.scheduler),
        "ddpm_ddim50": evaluate_ddpm(ddpm, n=n, scheduler="DDIM", num_inference_steps=50),
    }
    if not quick:
        steps = ddpm.scheduler.config.num_train_timesteps
        results["ddpm_full"] = evaluate_ddpm(ddpm, n=n, scheduler="DDPM", num_inference_steps=steps)
    print(f"digit classifier (SVM on 8x8 digits): held-out accuracy {results['classifier_held_out_accuracy']:.3f}")
    for key in ("sd_default", "sd_no_guidance"):
        r = results[key]
        accs = " ".join(f"{k}:{v:.2f}" for k, v in r["accuracy"].items())
        print(f"digits-sd guidance {r['guidance_scale']:g}, {r['scheduler']} {r['steps']} steps, "
              f"{r['n'] // 10}/class: min {min(r['accuracy'].values()):.2f} overall {r['overall']:.3f} | {accs}")
    for key in ("ddpm_ddim50", "ddpm_full"):
        if key in results:
            r = results[key]
            shares = " ".join(f"{k}:{v:.3f}" for k, v in r["share"].items())
            print(f"digits-ddpm {r['scheduler']} {r['steps']} steps, n={r['n']}: confident {r['confident']:.3f}, "
                  f"class shares {min(r['share'].values()):.3f}-{max(r['share'].values()):.3f} | {shares}")
    return results
