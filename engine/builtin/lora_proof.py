"""The offline proof that a LoRA teaches digits-sd a new word: "framed".

    python -m engine.builtin lora-proof            # make the data, measure, train a LoRA on the CPU, measure again
    python -m engine.builtin lora-proof --steps 400 --data-dir data --models-dir models   # keep what it makes

The data set is made here from scikit-learn's digits: every other digit gets a bright frame drawn round it
and the caption "a framed handwritten digit <k>"; the rest keep "a handwritten digit <k>", the captions the
model knows. The check needs no model: an image is framed when its outer ring is bright (see
:func:`is_framed`); the digit in it is read by the project's digit classifier with the ring blanked out.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.builtin.digits import NAMES, classifier
from engine.training.data import (DIGITS_FRAMED as DATA_NAME, FRAME_RING as RING, FRAMED_SIDE as SIDE,
                                  FRAMED_WORD as NEW_WORD, digit_image, draw_frame, framed_caption, framed_digits,
                                  plain_caption)

log = logging.getLogger(__name__)

# Mean brightness (0-255) of the outer ring above which an image counts as framed. digits-sd's small VAE blurs a
# white 2-px frame and greys a black background: its reconstructions of 400 framed digits have rings of 62-97, of
# the same digits unframed 17-68.
FRAMED_THRESHOLD = 85
DIGIT = 7  # the digit the figures ask for
SEEDS = 50


def make_framed_digits(folder: str | Path) -> int:
    """Write the data set (the built-in ``digits-framed``) to ``folder``: PNGs plus ``metadata.jsonl`` (datasets'
    imagefolder captions)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (image, text) in enumerate(framed_digits()):
        name = f"{i:04d}.png"
        Image.fromarray(image, mode="L").save(folder / name)
        rows.append({"file_name": name, "text": text})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def ring_brightness(images: np.ndarray) -> np.ndarray:
    """(N, H, W[, C]) uint8 -> (N,) mean brightness of each image's outer ring of :data:`RING` pixels."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 4:
        x = x.mean(axis=3)
    mask = np.ones(x.shape[1:], dtype=bool)
    mask[RING:-RING, RING:-RING] = False
    return x[:, mask].mean(axis=1)


def is_framed(images: np.ndarray) -> np.ndarray:
    return ring_brightness(images) > FRAMED_THRESHOLD


def unframed(images: np.ndarray) -> np.ndarray:
    """The images with the outer ring set to black, so the classifier reads the digit inside a frame."""
    out = np.array(images, copy=True)
    out[:, :RING] = out[:, -RING:] = 0
    out[:, :, :RING] = out[:, :, -RING:] = 0
    return out


@dataclass(frozen=True)
class Check:
    prompt: str
    framed: float  # share of the seeds whose image is framed
    digit: float  # share read as the prompt's digit (the ring blanked out first)
    framed_digit: float  # both

    def line(self) -> str:
        return (f"{self.prompt!r:40s} framed {self.framed:6.1%}   digit {NAMES[DIGIT]} {self.digit:6.1%}   "
                f"framed {NAMES[DIGIT]} {self.framed_digit:6.1%}")


def check(pipe, prompt: str, *, seeds: int = SEEDS, lora_scale: float | None = None, steps: int = 25) -> Check:
    """``seeds`` images of ``prompt`` (seeds 0..seeds-1, the Text to image tab's defaults), scored without a model:
    framed or not by the ring, the digit by the classifier."""
    import torch

    generators = [torch.Generator("cpu").manual_seed(s) for s in range(seeds)]
    kwargs = {"cross_attention_kwargs": {"scale": lora_scale}} if lora_scale is not None else {}
    images = pipe([prompt] * seeds, num_inference_steps=steps, guidance_scale=7.5, generator=generators,
                  output_type="np", **kwargs).images  # (N, 32, 32, 3) in [0, 1]
    images = (images * 255).round().astype(np.uint8)
    framed = is_framed(images)
    digit = classifier().score(unframed(images)).labels == DIGIT
    return Check(prompt, float(framed.mean()), float(digit.mean()), float((framed & digit).mean()))


def main(args) -> int:
    """The README's figures: before and after a LoRA trained on the CPU."""
    import tempfile

    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    from engine.models.registry import BUILTINS
    from engine.training.loop import iter_train
    from engine.training.request import TrainDone, TrainRequest, TrainStep

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(args.data_dir or Path(tmp) / "data")
        models_dir = Path(args.models_dir or Path(tmp) / "models")
        count = make_framed_digits(data_dir / DATA_NAME)
        print(f"data: {count} digits, every other framed and captioned 'a {NEW_WORD} handwritten digit <k>', "
              f"in {data_dir / DATA_NAME}")
        base = BUILTINS["digits-sd"].folder
        pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True)
        pipe.set_progress_bar_config(disable=True)
        framed_prompt, plain_prompt = framed_caption(DIGIT), plain_caption(DIGIT)
        before = [check(pipe, framed_prompt), check(pipe, plain_prompt)]

        request = TrainRequest(data=DATA_NAME, run_name=args.run_name, start_from="digits-sd", method="lora",
                               resolution=SIDE, batch_size=args.batch_size, max_steps=args.steps,
                               learning_rate=args.learning_rate, lr_warmup_steps=args.steps // 10,
                               lora_rank=args.rank, lora_alpha=float(args.rank),
                               lora_text_encoder=args.text_encoder, use_ema=False, save_every=0, sample_every=0,
                               first_sample_step=0, log_every=50, seed=0)
        start = time.perf_counter()
        for event in iter_train(request, models_dir=models_dir, data_dir=data_dir, device="cpu"):
            if isinstance(event, TrainStep):
                log.info("step %d/%d loss %.4f", event.step, event.total, event.loss)
            elif isinstance(event, TrainDone):
                path = Path(event.path)
        minutes = (time.perf_counter() - start) / 60
        pipe.load_lora_weights(str(path), adapter_name=NEW_WORD)  # plain diffusers, the run's checkpoint
        after = [check(pipe, framed_prompt, lora_scale=1.0), check(pipe, plain_prompt, lora_scale=1.0)]

    print(f"LoRA rank {args.rank}{' + text encoder' if args.text_encoder else ''}, {args.steps} steps at batch "
          f"{args.batch_size}, lr {args.learning_rate:g}: {minutes:.1f} minutes on the CPU ({args.threads} thread(s))")
    print(f"{SEEDS} seeds each, DPM++ 2M Karras 25 steps, guidance 7.5; framed = outer {RING}-px ring brighter "
          f"than {FRAMED_THRESHOLD}/255; digit = the digit classifier, ring blanked")
    print("before the LoRA:")
    for c in before:
        print("  " + c.line())
    print("after the LoRA (scale 1):")
    for c in after:
        print("  " + c.line())
    ok = after[0].framed_digit >= 0.8 and after[1].digit >= 0.9 and after[1].framed <= 0.1
    print("PASS" if ok else "FAIL", "(framed sevens >= 80% with the new word; the plain prompt: sevens >= 90%, "
                                    "framed <= 10%)")
    return 0 if ok else 1


def add_parser(sub) -> None:
    parser = sub.add_parser("lora-proof", help="teach digits-sd the word 'framed' with a LoRA and measure it")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--text-encoder", action=__import__("argparse").BooleanOptionalAction, default=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--run-name", default="digits-framed-lora")
    parser.add_argument("--data-dir", default=None, help="keep the data set here (default: a temporary folder)")
    parser.add_argument("--models-dir", default=None, help="keep the run and the LoRA here (default: temporary)")
