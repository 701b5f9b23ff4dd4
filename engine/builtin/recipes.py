"""Train the built-in models from scratch with the project's own training engine.

    python -m engine.builtin train digits-ddpm [--device cuda] [--scale 1.0]
    python -m engine.builtin train digits-sd   [--device cuda] [--scale 1.0]
    python -m engine.builtin evaluate [--quick]
    python -m engine.builtin lora-proof [--steps 400]   # a LoRA teaches digits-sd a new word (engine/builtin/lora_proof.py)

``train`` writes ``builtin_models/<name>/`` (pipeline folder only, no trainer state); the
seed is fixed, so a rerun on the same device and versions gives the same weights.
``evaluate`` prints the quality figures the README publishes.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

from engine.cancel import CancelToken
from engine.training.checkpoints import TRAINER_DIR, write_atomically
from engine.models.registry import BUILTIN_DIR
from engine.training.loop import iter_train
from engine.training.request import TrainDone, TrainRequest, TrainStep

log = logging.getLogger(__name__)

# digits-ddpm: a UNet2DModel on the digits at 32 px, the tutorial's recipe with EMA.
DDPM_REQUEST = TrainRequest(
    data="digits", run_name="digits-ddpm", preset="digits", resolution=32, batch_size=128, max_steps=4000,
    learning_rate=5e-4, lr_warmup_steps=200, use_ema=True, random_flip=False, seed=0,
    save_every=0, sample_every=0, log_every=100,
)
# digits-sd stage 1: the VAE (32 px -> 8x8x4).
VAE_REQUEST = TrainRequest(
    data="digits", run_name="digits-sd-vae", resolution=32, batch_size=128, max_steps=1500,
    learning_rate=1e-3, lr_warmup_steps=100, use_ema=False, random_flip=False, seed=0, save_every=0, sample_every=0,
    log_every=100,
)
# digits-sd stage 2: the conditional UNet and the text encoder, in the VAE's latent space.
SD_REQUEST = TrainRequest(
    data="digits", run_name="digits-sd", resolution=32, batch_size=128, max_steps=2400,
    learning_rate=5e-4, lr_warmup_steps=200, use_ema=True, random_flip=False, seed=0,
    save_every=0, sample_every=0, log_every=100, sample_num_inference_steps=25,  # DPM++ needs no more
)


def _scaled(request: TrainRequest, scale: float) -> TrainRequest:
    from dataclasses import replace

    steps = max(2, round(request.max_steps * scale))
    return replace(request, max_steps=steps, lr_warmup_steps=min(request.lr_warmup_steps, steps // 2),
                   log_every=min(request.log_every, steps))


STOP = CancelToken()  # SIGTERM/SIGINT: the run saves its checkpoint and stops, and that is published


def _run(request: TrainRequest, models_dir: Path, device: str, objective=None) -> Path:
    start = time.perf_counter()
    for event in iter_train(request, models_dir=models_dir, data_dir=models_dir, device=device,
                            objective=objective, cancel=STOP):
        if isinstance(event, TrainStep):
            log.info("%s step %d/%d loss %.4f (%.1f it/s)", request.run_name, event.step, event.total,
                     event.loss, event.steps_per_sec)
        elif isinstance(event, TrainDone):
            log.info("%s %s at step %d/%d in %.0f s", request.run_name, "stopped" if event.stopped else "done",
                     event.step, event.total, time.perf_counter() - start)
            return Path(event.path)
    raise RuntimeError(f"training {request.run_name} ended without a checkpoint")


def _publish(run_dir: Path, name: str, info: dict) -> Path:
    """Copy a run's pipeline folder (not its trainer state) to builtin_models/<name>, atomically."""

    def write(folder: Path) -> None:
        shutil.copytree(run_dir, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns(TRAINER_DIR))
        (folder / "TRAINING.json").write_text(json.dumps(info, indent=2))

    return write_atomically(BUILTIN_DIR / name, write)


def train_digits_ddpm(device: str = "auto", scale: float = 1.0) -> Path:
    request = _scaled(DDPM_REQUEST, scale)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_dir = _run(request, Path(tmp), device)
        info = {"command": f"python -m engine.builtin train digits-ddpm --scale {scale:g}",
                "request": request.__dict__, "seconds": round(time.perf_counter() - start), "device": device}
        return _publish(run_dir, "digits-ddpm", info)


def sd_setup(vae_dir: Path):
    from engine.builtin.digits import TEMPLATES, caption, digits_tokenizer, prompt_for
    from engine.training.objectives.latent import MODEL_MAX_LENGTH, TextToImageSetup

    return TextToImageSetup(vae_dir=vae_dir, captions=caption, prompts=prompt_for, num_templates=len(TEMPLATES),
                            tokenizer=lambda: digits_tokenizer(MODEL_MAX_LENGTH))


def train_digits_sd(device: str = "auto", scale: float = 1.0) -> Path:
    from engine.training.objectives.latent import VaeReconstruction

    vae_request, sd_request = _scaled(VAE_REQUEST, scale), _scaled(SD_REQUEST, scale)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        vae_dir = _run(vae_request, Path(tmp), device, objective=VaeReconstruction)
        run_dir = _run(sd_request, Path(tmp), device, objective=sd_setup(vae_dir))
        info = {"command": f"python -m engine.builtin train digits-sd --scale {scale:g}",
                "vae_request": vae_request.__dict__, "request": sd_request.__dict__,
                "seconds": round(time.perf_counter() - start), "device": device}
        return _publish(run_dir, "digits-sd", info)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.builtin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="retrain a built-in model from scratch (fixed seed)")
    train.add_argument("name", choices=("digits-ddpm", "digits-sd"))
    train.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    train.add_argument("--scale", type=float, default=1.0, help="multiply the step counts (e.g. 0.01 to smoke-test)")
    evaluate = sub.add_parser("evaluate", help="print the quality figures of the built-in models")
    evaluate.add_argument("--quick", action="store_true", help="fewer samples, as make test uses")
    evaluate.add_argument("--device", default="cpu")
    from engine.builtin import lora_proof

    lora_proof.add_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.command == "lora-proof":
        return lora_proof.main(args)
    if args.command == "train":
        import signal

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: STOP.cancel())
        fn = train_digits_ddpm if args.name == "digits-ddpm" else train_digits_sd
        print(fn(args.device, args.scale))
        return 0
    from engine.builtin.quality import print_report

    print_report(quick=args.quick, device=args.device)
    return 0

