"""The built-in digit models: plain diffusers loads them, they are small, and they draw digits.

Quality is checked on a small sample with bounds an untrained model fails (it scores
about 10% per class and puts most samples in one or two classes).
"""

import numpy as np
import pytest
import torch

from engine.builtin.digits import class_report, classifier, digits_tokenizer
from engine.models.registry import BUILTINS
from engine.builtin.quality import evaluate_ddpm, evaluate_sd, load_builtin


def folder_mb(name: str) -> float:
    return sum(p.stat().st_size for p in BUILTINS[name].folder.rglob("*") if p.is_file()) / 2**20


def test_sizes_and_safetensors_only():
    assert folder_mb("digits-ddpm") <= 10
    assert folder_mb("digits-sd") <= 20
    for name in ("digits-ddpm", "digits-sd"):
        files = [p.name for p in BUILTINS[name].folder.rglob("*") if p.is_file()]
        assert any(f.endswith(".safetensors") for f in files)
        assert not [f for f in files if f.endswith((".bin", ".ckpt", ".pt", ".pth"))]


def test_plain_diffusers_loads_them():
    from diffusers import DDPMPipeline, StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(BUILTINS["digits-sd"].folder, local_files_only=True)
    assert sd.unet.config.cross_attention_dim == sd.text_encoder.config.hidden_size
    image = sd("the number 4", num_inference_steps=3, generator=torch.Generator("cpu").manual_seed(0)).images[0]
    assert image.size == (32, 32)
    ddpm = DDPMPipeline.from_pretrained(BUILTINS["digits-ddpm"].folder, local_files_only=True)
    assert ddpm.unet.config.sample_size == 32


def test_tokenizer_keeps_known_words_whole_and_falls_back_on_others():
    tok = digits_tokenizer()
    tokens = tok.convert_ids_to_tokens(tok("a handwritten digit seven").input_ids)
    assert tokens[1:-1] == ["a</w>", "handwritten</w>", "digit</w>", "seven</w>"]
    odd = tok("Zebra sëven 🙂 and many more words than fit", padding="max_length", max_length=16,
              truncation=True).input_ids
    assert len(odd) == 16 and odd[0] == 0


def test_unknown_words_still_give_an_image():
    pipe = load_builtin("digits-sd")
    images = pipe(["Zebra sëven 🙂 ☃ qqq", ""], num_inference_steps=4, output_type="np",
                  generator=torch.Generator("cpu").manual_seed(0)).images
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()


def test_digits_sd_draws_the_prompted_digit():
    report = evaluate_sd(load_builtin("digits-sd"), per_class=6, guidance_scale=7.5, scheduler="DPM++ 2M Karras")
    assert report["overall"] >= 0.85, report
    assert min(report["accuracy"].values()) >= 0.5, report


def test_digits_ddpm_draws_every_digit():
    report = evaluate_ddpm(load_builtin("digits-ddpm"), n=80, scheduler="DDIM", num_inference_steps=25)
    assert report["confident"] >= 0.75, report
    shares = report["share"].values()
    assert max(shares) <= 0.3 and sum(s > 0 for s in shares) >= 8, report


def test_the_bounds_fail_on_an_untrained_model():
    from engine.testing.tiny import tiny_ddpm_pipeline

    untrained = tiny_ddpm_pipeline(seed=0, sample_size=32, channels=1)
    report = evaluate_ddpm(untrained, n=40, scheduler="DDIM", num_inference_steps=5)
    shares = report["share"].values()
    assert not (report["confident"] >= 0.75 and max(shares) <= 0.3 and sum(s > 0 for s in shares) >= 8)


def test_classifier_is_honest():
    from sklearn.datasets import load_digits

    assert classifier().held_out_accuracy >= 0.97
    digits = load_digits()
    images = np.round(digits.images * 255 / 16).astype(np.uint8).repeat(4, 1).repeat(4, 2)  # 32 px, as samples
    report = class_report(classifier().score(images[:300]), digits.target[:300])
    assert report["overall"] >= 0.97
