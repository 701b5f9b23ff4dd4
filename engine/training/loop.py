"""The training loop behind :func:`engine.training.loop.iter_train`.

One :class:`Trainer` per run. Everything that can fail on bad input (the request,
the data, a checkpoint to resume) is checked in :meth:`Trainer._setup`, before the
first step. The loop is the tutorial's, through ``accelerate`` (gradient accumulation,
mixed precision, several processes); the data order, flips, noise and timesteps come
from seeded generators whose state is checkpointed, so a resumed run takes the same
steps as one never stopped.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Iterator

import torch

from engine.training import checkpoints as ckpt
from engine.cancel import CancelToken
from engine.training.data import (EpochSampler, attach_transform, load_captioned_data, load_image_data,
                                  make_dataloader, random_flip)
from engine.errors import Cancelled, DataError, InputError
from engine.training.objectives import Objective, ObjectiveFactory
from engine.training.objectives.choose import RequestObjective
from engine.training.objectives.terms import LossTerms
from engine.sampling.preview import images_to_uint8, spaced_grid
from engine.training.request import (RUN_CONTROL, TrainCheckpoint, TrainDone, TrainEvent, TrainRequest, TrainSample,
                                     TrainStarted, TrainStep)

log = logging.getLogger(__name__)

GRID_MIN_TILE = 120  # each sample of a grid is enlarged (nearest) to at least this many pixels a side
GRID_GAP = 8  # pixels between a grid's samples, so that 16 digits read as 16 and not as one picture
GRID_GAP_COLOUR = (229, 231, 235)  # a light grey, apart from the digits' black and white
NUM_BUCKETS = 10  # the loss is charted by timestep in this many equal buckets of t


def make_accelerator(mixed_precision: str, gradient_accumulation_steps: int, device: str = "auto"):
    """An ``Accelerator`` for one run: this process alone, or one of ``accelerate launch``'s."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import GradientAccumulationPlugin

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not launched:  # accelerate keeps settings process-wide; a new run in this process starts clean
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    has_cuda = torch.cuda.is_available()
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"unknown device {device!r}; allowed: auto, cpu, cuda")
    if device == "cuda" and not has_cuda:
        raise InputError("device 'cuda' was asked for, but torch sees no CUDA device; use cpu")
    cpu = device == "cpu" or (device == "auto" and not has_cuda and not has_mps)
    if mixed_precision == "fp16" and (cpu or not has_cuda):
        raise InputError("fp16 mixed precision needs a CUDA GPU; this run is on the CPU: use 'bf16' or 'no'")
    if mixed_precision == "bf16" and not cpu and has_cuda and not torch.cuda.is_bf16_supported():
        raise InputError("this GPU has no bf16; use 'fp16' or 'no' mixed precision")
    plugin = GradientAccumulationPlugin(num_steps=gradient_accumulation_steps, sync_with_dataloader=False)
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision, gradient_accumulation_plugin=plugin,
                       step_scheduler_with_optimizer=False)


class Trainer:
    def __init__(self, request: TrainRequest, *, models_dir: Path, data_dir: Path, device: str = "auto",
                 objective: ObjectiveFactory | None = None, on_checkpoint=None):
        self.request = request
        self.models_dir = models_dir
        self.data_dir = data_dir
        self.device = device
        self.objective_cls = objective or RequestObjective(models_dir)
        self.on_checkpoint = on_checkpoint

    # -- the run ----------------------------------------------------------------------------
    def run(self, cancel: CancelToken | None) -> Iterator[object]:
        # 1. Set up; every check on the request and the data happens here, before any step.
        yield self._setup()
        self.started_at = self._window_start = time.perf_counter()

        # 2. Steps, with reports, grids and checkpoints at their intervals, until done or stopped.
        stopped = False
        for batch in self._batches():
            if not self._micro_step(batch):
                continue  # accumulating gradients
            yield from self._reports(cancel)
            stopped = self._stop_requested(cancel)
            if stopped or self.step >= self.total:
                break
            if self.request.save_every and self.step % self.request.save_every == 0:
                yield self._save()
        # 3. Report what is left, a last grid, a last checkpoint (also on Stop), then Done.
        if self.window:
            yield self._log_event()
        if not stopped and self.request.sample_every and self.last_sample != self.step and self.is_main:
            yield self._sample(None)
        if self.saved_step != self.step:
            yield self._save()
        self.accelerator.wait_for_everyone()
        yield TrainDone(step=self.step, total=self.total, stopped=self.step < self.total,
                        path=str(self.run_dir) if self.saved_step is not None else None,
                        elapsed=time.perf_counter() - self.started_at,
                        info={"run_name": self.request.run_name, "data": self.data.report.summary()})

    def _batches(self) -> Iterator[dict]:
        """Micro-batches ({"images": (B, C, H, W)[, "labels": (B,)]}) forever, from where the step count says."""
        while True:
            epoch, offset = divmod(self.step, self.steps_per_epoch)
            self.sampler.epoch, self.sampler.start = epoch, offset * self.images_per_step
            yield from self.dataloader

    def _micro_step(self, batch: dict) -> bool:
        """Forward and backward one micro-batch; True when it completed an optimizer step."""
        acc, request = self.accelerator, self.request
        if request.random_flip:
            batch = {**batch, "images": random_flip(batch["images"], self.generator)}
        with acc.accumulate(self.model):
            loss = self.objective.loss(self.model, batch, self.generator)
            if isinstance(loss, LossTerms):
                self._add_to_buckets(loss)
                loss = loss.loss
            acc.backward(loss)
            if acc.sync_gradients and request.max_grad_norm > 0:
                acc.clip_grad_norm_(self.params, request.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        loss = loss.detach() / request.gradient_accumulation_steps
        self.step_loss = loss if self.step_loss is None else self.step_loss + loss
        if not acc.sync_gradients:
            return False
        self.window.append(self.step_loss)  # read every log_every steps: no device sync here
        self.step_loss = None
        self.lr = self.optimizer.param_groups[0]["lr"]
        self.lr_window.append(self.lr)
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.step(self.params)
        self.step += 1
        return True

    def _add_to_buckets(self, terms: LossTerms) -> None:
        """Sum each image's loss into its timestep's bucket (on the device: read at the next report)."""
        if self.bucket_sums is None:
            device = terms.per_sample.device
            self.bucket_sums = torch.zeros(NUM_BUCKETS, device=device, dtype=torch.float64)
            self.bucket_counts = torch.zeros(NUM_BUCKETS, device=device, dtype=torch.float64)
        bucket = (terms.timesteps.to(self.bucket_sums.device) * NUM_BUCKETS // terms.num_train_timesteps)
        bucket = bucket.clamp(0, NUM_BUCKETS - 1)  # (B,)
        self.bucket_sums.index_add_(0, bucket, terms.per_sample.detach().to(self.bucket_sums))
        self.bucket_counts.index_add_(0, bucket, torch.ones_like(bucket, dtype=self.bucket_counts.dtype))

    def _bucket_means(self) -> tuple[float | None, ...]:
        """Mean loss per bucket since the last report, over all processes; None where no image fell."""
        if self.bucket_sums is None:
            return ()
        both = torch.stack([self.bucket_sums, self.bucket_counts])  # (2, NUM_BUCKETS)
        if self.accelerator.num_processes > 1:
            both = self.accelerator.reduce(both, "sum")
        sums, counts = both.tolist()
        self.bucket_sums.zero_()
        self.bucket_counts.zero_()
        return tuple(s / c if c else None for s, c in zip(sums, counts))

    def _reports(self, cancel: CancelToken | None) -> Iterator[object]:
        request = self.request
        if self.step % request.log_every == 0 or self.step == self.total:
            yield self._log_event()
        if self._grid_due() and self.is_main:
            sample = self._sample(cancel if self.accelerator.num_processes == 1 else None)
            if sample is not None:
                yield sample

    def _grid_due(self) -> bool:
        """A grid every ``sample_every`` steps, and an early one ``first_sample_step`` steps into this session."""
        request = self.request
        if not request.sample_every:
            return False
        early = request.first_sample_step and self.step - self.start_step == request.first_sample_step
        return bool(early) or self.step % request.sample_every == 0

    def _stop_requested(self, cancel: CancelToken | None) -> bool:
        """Whether to stop now; processes agree on it at log steps."""
        wanted = cancel is not None and cancel.cancelled
        if self.accelerator.num_processes == 1:
            return wanted
        if self.step % self.request.log_every:
            return False
        flag = torch.tensor([float(wanted)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, "sum").item() > 0)

    def _window_losses(self) -> tuple[float, ...]:
        """The losses of the steps since the last report, averaged over processes (all of them take part)."""
        if not self.window:
            return ()
        values = torch.stack(self.window).float()  # (k,)
        if self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values, "mean")
        return tuple(values.tolist())

    def _log_event(self) -> TrainStep:
        losses = self._window_losses()
        self.window.clear()
        self.history.extend(losses)
        lrs = tuple(self.lr_window)
        self.lr_window.clear()
        self.lr_history.extend(lrs)
        buckets = self._bucket_means()
        if buckets:
            self.bucket_history.append((self.step, buckets))
        now = time.perf_counter()
        steps_per_sec = len(losses) / max(now - self._window_start, 1e-9)
        self._window_start = now
        return TrainStep(step=self.step, total=self.total, loss=sum(losses) / len(losses), losses=losses,
                         lr=self.lr, steps_per_sec=steps_per_sec,
                         images_per_sec=steps_per_sec * self.images_per_step, elapsed=now - self.started_at,
                         lrs=lrs, bucket_loss=buckets)

    def _sample(self, cancel: CancelToken | None) -> TrainSample | None:
        """A grid from the (EMA) model with the request's fixed seed; None if cancelled."""
        unet, request = self.unwrapped, self.request
        unet.eval()
        if self.ema is not None:
            self.ema.store(self.params)
            self.ema.copy_to(self.params)
        try:
            images = self.objective.sample(unet, num_images=request.sample_images, seed=request.seed,
                                           num_inference_steps=request.sample_num_inference_steps, cancel=cancel)
        except Cancelled:
            return None
        finally:
            if self.ema is not None:
                self.ema.restore(self.params)
            unet.train()
        self.last_sample = self.step
        samples = images_to_uint8(images.float())  # (N, h, w, 3)
        layout = getattr(self.objective, "grid", None)  # an objective may lay its samples out itself (LoRA)
        if layout is not None:
            grid = layout(samples)
        else:
            grid = spaced_grid(samples, min_tile=GRID_MIN_TILE, gap=GRID_GAP, colour=GRID_GAP_COLOUR)
        return TrainSample(self.step, grid, samples)

    # -- set-up -------------------------------------------------------------------------------
    def _setup(self) -> TrainStarted:
        from diffusers.optimization import get_cosine_schedule_with_warmup

        # 1. The accelerator, then the run's name and (when resuming) its checkpoint.
        self.accelerator = acc = make_accelerator(self.request.mixed_precision,
                                                  self.request.gradient_accumulation_steps, self.device)
        self.is_main = acc.is_main_process
        state = self._resolve_run()
        request = self.request

        # 2. The data, checked before anything is built.
        self._setup_data(state)

        # 3. Model (new, or the base model's), AdamW on what it trains, cosine schedule with warm-up; accelerate
        #    wraps them. The data is preprocessed for the model (its channels) from here on.
        self.objective: Objective = self.objective_cls.from_request(request, self.data)
        attach_transform(self.data, request.resolution, channels=getattr(self.objective, "channels", None))
        model = self.objective.build_model(request.seed)
        self.params = [p for p in model.parameters() if p.requires_grad]  # all, or the adapters of a frozen base
        optimizer = torch.optim.AdamW(self.params, lr=request.learning_rate)
        self.total = request.max_steps or request.num_epochs * self.steps_per_epoch
        self.lr_scheduler = get_cosine_schedule_with_warmup(optimizer, request.lr_warmup_steps, self.total)
        self.model, self.optimizer, self.dataloader = acc.prepare(model, optimizer, self.dataloader)
        self.unwrapped = acc.unwrap_model(self.model)
        self.ema = self._make_ema()

        # 4. The run's generator (flips, noise, timesteps): one stream per process.
        device = acc.device if acc.device.type != "cpu" else torch.device("cpu")
        self.generator = torch.Generator(device).manual_seed(request.seed + 7919 * (acc.process_index + 1))

        # 5. Loop state, then the checkpoint's on top when resuming.
        self.step, self.saved_step, self.last_sample, self.lr = 0, None, None, request.learning_rate
        self.step_loss, self.window, self.history = None, [], []
        self.lr_window, self.lr_history, self.bucket_history = [], [], []
        self.bucket_sums = self.bucket_counts = None
        self.num_train_timesteps = getattr(self.objective, "num_train_timesteps", None)
        if state is not None:
            self._restore(state)
        self.start_step = self.step
        if self.step >= self.total:
            raise InputError(f"run {request.run_name!r} already reached step {self.step} of {self.total}; "
                             "raise max steps or epochs to train further")
        log.debug("training %s: steps %d-%d, %s", request.run_name, self.step + 1, self.total,
                 self.data.report.summary())
        return TrainStarted(
            run_name=request.run_name, run_dir=str(self.run_dir), start_step=self.step, total=self.total,
            steps_per_epoch=self.steps_per_epoch, batch_size=self.batch_size, num_processes=acc.num_processes,
            data=self.data.report, history=tuple(self.history),
            info={"request": asdict(request), "device": str(acc.device), "mixed_precision": acc.mixed_precision,
                  **getattr(self.objective, "info", {})},
            lr_history=tuple(self.lr_history), bucket_edges=bucket_edges(self.num_train_timesteps),
            bucket_history=tuple(self.bucket_history),
        )

    def _resolve_run(self) -> dict | None:
        """Name the run; for a resume, read and check its checkpoint. Returns the trainer state or None."""
        from accelerate.utils import broadcast_object_list

        acc, request = self.accelerator, self.request
        name = [request.resolved().run_name]
        if acc.num_processes > 1:
            broadcast_object_list(name)  # every process uses the main process's name
        self.request = request = replace(request, run_name=name[0])
        self.run_dir = self.models_dir / request.run_name
        if self.is_main:
            ckpt.recover(self.run_dir)
        acc.wait_for_everyone()
        if not request.resume:
            if self.run_dir.exists():
                raise InputError(f"a run or model named {request.run_name!r} already exists in the models dir; "
                                 "resume it or pick another run name")
            return None
        state = ckpt.read_state(self.run_dir)
        saved = TrainRequest(**state["request"])
        changed = [f"{f.name} {getattr(saved, f.name)!r} -> {getattr(request, f.name)!r}" for f in fields(saved)
                   if f.name not in RUN_CONTROL and getattr(saved, f.name) != getattr(request, f.name)]
        if changed:
            raise InputError(f"resuming {request.run_name!r} keeps its settings, but these differ: "
                             f"{'; '.join(changed)}; only {', '.join(RUN_CONTROL[:-1])} may change")
        return state

    def _setup_data(self, state: dict | None) -> None:
        acc, request = self.accelerator, self.request
        load = load_captioned_data if request.method == "lora" else load_image_data
        self.data = data = load(request.data, self.data_dir)
        n, per_batch = len(data), acc.num_processes * request.gradient_accumulation_steps
        self.batch_size = request.batch_size
        if n < self.batch_size * per_batch:
            need = (f"{request.data!r} has {n} usable image(s), fewer than one step needs: batch size "
                    f"{request.batch_size} x {acc.num_processes} process(es) x "
                    f"{request.gradient_accumulation_steps} accumulation step(s) = {request.batch_size * per_batch}")
            if n < per_batch:
                raise DataError(f"{need}; add images or use fewer processes or accumulation steps")
            if not request.clamp_batch_size:
                raise DataError(f"{need}; lower the batch size to {n // per_batch} or turn on clamp_batch_size")
            self.batch_size = n // per_batch
            log.warning("%s; batch size clamped to %d", need, self.batch_size)
        if state is not None and state.get("batch_size") != self.batch_size:
            raise InputError(f"the checkpoint trained with batch size {state.get('batch_size')}, this data gives "
                             f"{self.batch_size}; resume with the same data and processes")
        self.images_per_step = self.batch_size * per_batch
        self.steps_per_epoch = n // self.images_per_step
        self.sampler = EpochSampler(n, self.steps_per_epoch * self.images_per_step, request.seed)
        self.dataloader = make_dataloader(data, self.batch_size, self.sampler, num_workers=request.num_workers)

    def _make_ema(self):
        if not self.request.use_ema:
            return None
        from diffusers.training_utils import EMAModel

        # diffusers' train_unconditional settings: warm-up with power 3/4 suits runs under ~200k steps.
        return EMAModel(self.params, decay=self.request.ema_max_decay, use_ema_warmup=True,
                        inv_gamma=1.0, power=3 / 4, foreach=True,
                        model_cls=type(self.unwrapped), model_config=self.unwrapped.config)

    # -- checkpoints ----------------------------------------------------------------------------
    def _save(self) -> TrainCheckpoint:
        rng = self._rng_states()  # every process takes part
        # Steps since the last report are in the checkpoint too: its history is every step's loss up to its step.
        history = self.history + list(self._window_losses())
        published = None
        if self.is_main:
            ckpt.write_atomically(self.run_dir, lambda folder: self._write(folder, rng, history))
            log.info("checkpoint at step %d: %s", self.step, self.run_dir)
            publish = getattr(self.objective, "publish", None)  # a LoRA is copied to where the tabs list it
            if publish is not None:
                published = str(publish(self.run_dir, self.models_dir, self.request.run_name, self.step))
            if self.on_checkpoint is not None:
                self.on_checkpoint(self.request.run_name, self.run_dir)
        self.accelerator.wait_for_everyone()
        self.saved_step = self.step
        return TrainCheckpoint(self.step, str(self.run_dir), published)

    def _rng_states(self) -> dict[str, torch.Tensor]:
        state = self.generator.get_state()  # (L,) uint8 on the CPU
        if self.accelerator.num_processes == 1:
            return {"process_0": state}
        gathered = self.accelerator.gather(state.to(self.accelerator.device)[None]).cpu()  # (N, L)
        return {f"process_{i}": row for i, row in enumerate(gathered)}

    def _write(self, folder: Path, rng: dict[str, torch.Tensor], history: list[float]) -> None:
        unet = self.unwrapped
        trainer_dir = folder / ckpt.TRAINER_DIR
        trainer_dir.mkdir()
        if self.ema is not None:
            ckpt.save_tensors(trainer_dir / "unet.safetensors", self._trained_state())
            self.ema.store(self.params)
            self.ema.copy_to(self.params)
        try:
            self.objective.save_pretrained(unet, folder)  # the EMA weights when EMA is on
        finally:
            if self.ema is not None:
                self.ema.restore(self.params)
        tensors, optimizer_meta = ckpt.optimizer_to_files(self.optimizer)
        ckpt.save_tensors(trainer_dir / "optimizer.safetensors", tensors)
        ckpt.save_tensors(trainer_dir / "rng.safetensors", rng)
        ema = None
        if self.ema is not None:
            ema = {k: v for k, v in self.ema.state_dict().items() if k != "shadow_params"}
        scaler = self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else None
        ckpt.write_json(trainer_dir / ckpt.STATE_FILE, {  # last: its presence marks a complete checkpoint
            "format": ckpt.FORMAT, "step": self.step, "total": self.total, "request": asdict(self.request),
            "num_processes": self.accelerator.num_processes, "num_images": len(self.data),
            "batch_size": self.batch_size, "optimizer": optimizer_meta,
            "lr_scheduler": ckpt.lr_scheduler_state(self.lr_scheduler), "lr": self.lr,
            "ema": ema, "scaler": scaler, "history": history, "lr_history": self.lr_history,
            "bucket_history": self.bucket_history,
        })

    def _trained_state(self) -> dict[str, torch.Tensor]:
        """The weights the run trains: the whole model's state, or only the adapters of a frozen base."""
        unet = self.unwrapped
        if len(self.params) == len(list(unet.parameters())):
            return unet.state_dict()
        return {name: p for name, p in unet.named_parameters() if p.requires_grad}

    def _load_trained_state(self, weights: dict[str, torch.Tensor]) -> None:
        unet = self.unwrapped
        partial = len(self.params) != len(list(unet.parameters()))
        missing, unexpected = unet.load_state_dict(weights, strict=not partial)
        trained = {name for name, p in unet.named_parameters() if p.requires_grad}
        if unexpected or trained & set(missing):
            raise InputError(f"the checkpoint in {self.run_dir} does not fit this run's model: "
                             f"{len(unexpected)} unknown and {len(trained & set(missing))} missing weight(s)")

    def _restore(self, state: dict) -> None:
        trainer_dir = self.run_dir / ckpt.TRAINER_DIR
        unet = self.unwrapped
        pipeline_weights = self.objective.load_saved_weights(self.run_dir)
        raw = ckpt.load_tensors(trainer_dir / "unet.safetensors") if self.ema is not None else pipeline_weights
        self._load_trained_state(raw)
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
            self.ema.shadow_params = [pipeline_weights[name].to(p.device) for name, p in unet.named_parameters()
                                      if p.requires_grad]
        ckpt.optimizer_from_files(self.optimizer, ckpt.load_tensors(trainer_dir / "optimizer.safetensors"),
                                  state["optimizer"])
        ckpt.load_lr_scheduler(self.lr_scheduler, state["lr_scheduler"])
        if self.accelerator.scaler is not None and state.get("scaler"):
            self.accelerator.scaler.load_state_dict(state["scaler"])
        rng = ckpt.load_tensors(trainer_dir / "rng.safetensors")
        key = f"process_{self.accelerator.process_index}"
        if key in rng and state.get("num_processes") == self.accelerator.num_processes:
            self.generator.set_state(rng[key])
        else:
            log.warning("the checkpoint was written by %s process(es), this run has %d: noise will differ",
                        state.get("num_processes"), self.accelerator.num_processes)
        if state.get("num_images") != len(self.data):
            log.warning("the data had %s images at the checkpoint, now %d: the data order will differ",
                        state.get("num_images"), len(self.data))
        self.step = self.saved_step = int(state["step"])
        self.lr = state.get("lr", self.lr)
        self.history = list(state.get("history", []))
        self.lr_history = list(state.get("lr_history", []))
        self.bucket_history = [(int(step), tuple(values)) for step, values in state.get("bucket_history", [])]


def bucket_edges(num_train_timesteps: int | None) -> tuple[int, ...]:
    """The bounds of :data:`NUM_BUCKETS` equal timestep buckets of 0..T-1: bucket i holds t with
    t * NUM_BUCKETS // T == i, that is edges[i] <= t < edges[i + 1]. () where the objective has no timesteps."""
    if not num_train_timesteps:
        return ()
    return tuple(-(-i * num_train_timesteps // NUM_BUCKETS) for i in range(NUM_BUCKETS + 1))


def iter_train(
    request: TrainRequest,
    *,
    models_dir: str | Path,
    data_dir: str | Path,
    cancel: CancelToken | None = None,
    device: str = "auto",
    objective: ObjectiveFactory | None = None,
    on_checkpoint=None,
) -> Iterator[TrainEvent]:
    """Train as ``request`` says, yielding events; see the module docstring for their order.

    ``device``: "auto", "cpu" or "cuda" (ignored under ``accelerate launch``, which decides).
    ``objective``: a class like :class:`engine.training.objectives.pixel.NoisePrediction` (the default).
    ``on_checkpoint(run_name, path)``: called on the main process after each save, e.g. to
    drop a cached pipeline of the run. Raises :class:`InputError` or :class:`DataError`
    before the first step when the request or the data cannot be used.
    """
    trainer = Trainer(request, models_dir=Path(models_dir), data_dir=Path(data_dir), device=device,
                      objective=objective, on_checkpoint=on_checkpoint)
    yield from trainer.run(cancel)
