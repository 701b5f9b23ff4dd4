"""Train without the page: ``python -m engine.training``.

Every :class:`engine.training.request.TrainRequest` field is an option (``--max-steps``,
``--use-ema/--no-use-ema``, ...). One process::

    python -m engine.training --data digits --run-name digits-quick            # the "quick" recipe (the defaults)
    python -m engine.training --recipe tutorial --run-name digits-tutorial     # the diffusers tutorial's schedule
    python -m engine.training --start-from digits-ddpm --resolution 32 --data my-folder   # fine-tune a model
    python -m engine.training --method lora --start-from digits-sd --resolution 32 --data captioned-folder

Several GPUs or machines (accelerate is the distributed engine; on a machine
without a GPU the processes train on the CPU)::

    accelerate launch --multi_gpu --num_processes 2 -m engine.training --data digits --run-name digits-ddp

Ctrl-C (or SIGTERM) once saves a checkpoint and stops; ``--resume --run-name NAME`` continues it
(options given with ``--resume`` may only change run control: steps, intervals).
"""

from __future__ import annotations

import argparse
import logging
import signal
from dataclasses import fields
from pathlib import Path

from engine.cancel import CancelToken
from engine.errors import InputError, WorkbenchError

log = logging.getLogger("engine.training.request")


def build_parser() -> argparse.ArgumentParser:
    from engine.sampling.schedulers import SAMPLER_BETA_SCHEDULES
    from engine.training.objectives.pixel import PRESETS
    from engine.training.recipes import DEFAULT_RECIPE, RECIPES
    from engine.training.base import METHODS
    from engine.training.request import LORA_LAYERS, MIXED_PRECISION, field_help

    parser = argparse.ArgumentParser(prog="python -m engine.training", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", default="models", help="checkpoints go to MODELS_DIR/<run name>/ (models)")
    parser.add_argument("--data-dir", default="data", help="image folders are looked up here (data)")
    parser.add_argument("--outputs-dir", default="outputs",
                        help="sample grids go to OUTPUTS_DIR/train/<run>/ (outputs)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--recipe", choices=tuple(RECIPES), default=None,
                        help="start from a named recipe's settings; options given beside it win. "
                             + "; ".join(f"{r.name}: {r.summary}" for r in RECIPES.values())
                             + f" (default: the defaults below, which are {DEFAULT_RECIPE!r})")
    group = parser.add_argument_group("training settings (TrainRequest fields; given ones only)")
    choices = {"preset": tuple(PRESETS), "mixed_precision": MIXED_PRECISION, "beta_schedule": SAMPLER_BETA_SCHEDULES,
               "method": METHODS, "lora_layers": tuple(LORA_LAYERS)}
    for name, (default, comment) in field_help().items():
        flag = "--" + name.replace("_", "-")
        text = f"{comment} (default: {default!r})"
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            group.add_argument(flag, type=type(default), default=None, choices=choices.get(name), help=text)
    return parser


def request_from_args(args: argparse.Namespace):
    """Only the options given on the command line (over ``--recipe``'s settings); with ``--resume`` they change
    the saved request."""
    from engine.training.recipes import recipe
    from engine.training.request import TrainRequest, resume_request

    given = {f.name: getattr(args, f.name) for f in fields(TrainRequest) if getattr(args, f.name) is not None}
    if given.get("resume"):
        name = given.pop("run_name", "")
        given.pop("resume")
        if not name:
            raise InputError("--resume needs --run-name: the run to continue")
        if args.recipe is not None:
            raise InputError(f"--recipe {args.recipe} sets up a new run; a resumed run keeps its own settings")
        return resume_request(args.models_dir, name, **given)
    base = recipe(args.recipe).settings if args.recipe is not None else {}
    return TrainRequest(**{**base, **given})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cancel = CancelToken()
    _stop_on_ctrl_c(cancel)
    try:
        return _train(args, cancel)
    except WorkbenchError as exc:
        log.error("%s", exc)
        return 2


def _train(args: argparse.Namespace, cancel: CancelToken) -> int:
    from PIL import Image

    from engine.training.loop import iter_train
    from engine.training.recipes import steps_hint
    from engine.training.request import TrainDone, TrainSample, TrainStarted, TrainStep

    request = request_from_args(args)
    main_process = True
    grids_dir = None
    for event in iter_train(request, models_dir=args.models_dir, data_dir=args.data_dir, cancel=cancel,
                            device=args.device):
        if isinstance(event, TrainStarted):
            main_process = _is_main()
            grids_dir = Path(args.outputs_dir) / "train" / event.run_name
            if main_process:
                log.info("run %s: steps %d-%d of %d (%d per epoch), batch %d x %d process(es); %s",
                         event.run_name, event.start_step + 1, event.total, event.total, event.steps_per_epoch,
                         event.batch_size, event.num_processes, event.data.summary())
                if hint := steps_hint(request):
                    log.info("%s", hint)
        elif isinstance(event, TrainDone):
            if main_process:
                log.info("%s at step %d of %d in %s; checkpoint: %s", "stopped" if event.stopped else "finished",
                         event.step, event.total, _hms(event.elapsed), event.path)
            return 130 if event.stopped else 0
        elif not main_process:
            continue
        elif isinstance(event, TrainStep):
            log.info("step %d/%d loss %.4f lr %.2e %.2f it/s %.1f img/s eta %s", event.step, event.total,
                     event.loss, event.lr, event.steps_per_sec, event.images_per_sec, _hms(event.eta))
        elif isinstance(event, TrainSample):
            grids_dir.mkdir(parents=True, exist_ok=True)
            path = grids_dir / f"step-{event.step:07d}.png"
            Image.fromarray(event.grid).save(path)
            log.info("sample grid: %s", path)
    return 1


def _is_main() -> bool:
    from accelerate.state import PartialState

    return PartialState().is_main_process


def _stop_on_ctrl_c(cancel: CancelToken) -> None:
    def handler(signum, frame):
        if cancel.cancelled:
            raise KeyboardInterrupt
        log.warning("stopping: saving a checkpoint first (Ctrl-C again to abort without saving)")
        cancel.cancel()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)  # torchrun passes Ctrl-C on to its workers as SIGTERM


def _hms(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

