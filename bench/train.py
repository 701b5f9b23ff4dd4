"""Training speed: the engine's loop against a plain loop of the diffusers tutorial's recipe.

Both train the same UNet preset on the same data at the same batch size for the same
number of steps. The engine runs as a user of the "tutorial" recipe would get it: loss
reports, sample grids and checkpoints at that recipe's rates (a grid and a checkpoint every
500 steps; no early grid, as when the figure in the README was measured). The plain loop is the tutorial's
``train_loop`` in plain PyTorch: ``DataLoader(shuffle=True)``, ``randn``/``randint``
from the global RNG, ``add_noise``, MSE, ``backward``, clip, AdamW, cosine schedule.
Runs alternate (plain, engine, plain, engine, ...) so that a busy machine slows both
alike; the printed ratio is the median engine rate over the median plain rate.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/train.py            # defaults: digits, tiny, 32 px, batch 16
    HF_HUB_OFFLINE=1 .venv/bin/python bench/train.py --steps 1000 --repeats 3 --threads 1
    HF_HUB_OFFLINE=1 python bench/train.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from engine.training.data import attach_transform, load_image_data  # noqa: E402
from engine.training.objectives.pixel import NoisePrediction  # noqa: E402
from engine.training.loop import iter_train  # noqa: E402
from engine.training.recipes import recipe  # noqa: E402
from engine.training.request import TrainRequest, TrainSample, TrainStep  # noqa: E402

TUTORIAL = recipe("tutorial").settings


def plain_loop(request: TrainRequest, steps: int, data_dir: str, device: str = "cpu") -> float:
    """The tutorial's loop, no engine: images per second over ``steps`` optimizer steps."""
    from diffusers.optimization import get_cosine_schedule_with_warmup

    data = load_image_data(request.data, data_dir)
    attach_transform(data, request.resolution, flip=request.random_flip)  # torchvision's RandomHorizontalFlip
    dataloader = torch.utils.data.DataLoader(data.dataset, batch_size=request.batch_size, shuffle=True,
                                             drop_last=True)
    objective = NoisePrediction.from_request(request, data)
    model = objective.build_model(request.seed).to(device)
    noise_scheduler = objective.noise_scheduler
    optimizer = torch.optim.AdamW(model.parameters(), lr=request.learning_rate)
    lr_scheduler = get_cosine_schedule_with_warmup(optimizer, request.lr_warmup_steps, steps)
    torch.manual_seed(request.seed)
    step, start = 0, time.perf_counter()
    while step < steps:
        for batch in dataloader:
            clean_images = batch["images"].to(device)
            noise = torch.randn(clean_images.shape, device=device)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (clean_images.shape[0],),
                                      device=device)
            noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)
            noise_pred = model(noisy_images, timesteps, return_dict=False)[0]
            loss = F.mse_loss(noise_pred, noise)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), request.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step == steps:
                break
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * request.batch_size / (time.perf_counter() - start)


def engine_loop(request: TrainRequest, steps: int, data_dir: str, device: str = "cpu") -> tuple[float, int, int]:
    """(images per second, sample grids, loss reports), timed from the first step to the end."""
    grids = reports = 0
    start = None
    with tempfile.TemporaryDirectory() as models_dir:
        for event in iter_train(request, models_dir=models_dir, data_dir=data_dir, device=device):
            if start is None:
                start = time.perf_counter()  # after set-up (data load, model build), as for the plain loop
            grids += isinstance(event, TrainSample)
            reports += isinstance(event, TrainStep)
        elapsed = time.perf_counter() - start
    return steps * request.batch_size / elapsed, grids, reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500, help="optimizer steps per run (default 500: one grid)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each loop")
    parser.add_argument("--resolution", type=int, default=TUTORIAL["resolution"])
    parser.add_argument("--batch-size", type=int, default=TUTORIAL["batch_size"])
    parser.add_argument("--preset", default=TUTORIAL["preset"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    request = TrainRequest(**{**TUTORIAL, "data": "digits", "run_name": "bench", "preset": args.preset,
                              "resolution": args.resolution, "batch_size": args.batch_size, "max_steps": args.steps,
                              "random_flip": True, "first_sample_step": 0})
    data_dir = tempfile.mkdtemp()
    print(f"preset {request.preset}, digits at {request.resolution} px, batch {request.batch_size}, "
          f"{args.steps} steps on {args.device}, torch threads {torch.get_num_threads()}; "
          f"engine: log every {request.log_every}, "
          f"grid every {request.sample_every} ({request.sample_images} images, "
          f"{request.sample_num_inference_steps} DDIM steps), save every {request.save_every}")
    plain, engine = [], []
    for i in range(args.repeats):
        plain.append(plain_loop(request, args.steps, data_dir, args.device))
        rate, grids, reports = engine_loop(request, args.steps, data_dir, args.device)
        engine.append(rate)
        print(f"run {i + 1}: plain {plain[-1]:.1f} img/s, engine {rate:.1f} img/s "
              f"({grids} grid(s), {reports} loss reports), ratio {rate / plain[-1]:.3f}")
    ratio = statistics.median(engine) / statistics.median(plain)
    print(f"engine / plain images per second: {ratio:.3f} (target >= 0.90)")


if __name__ == "__main__":
    main()
