"""The engine's front door: one object per process that holds the device, the models
and the folders, and offers every tab's work as plain Python calls.

Everything the page can do, a Python caller can do through this class alone.
"""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from engine.cancel import CancelToken, check
from engine.errors import InputError, ModelLoadError, WorkbenchError
from engine.events import HISTORY_MODES, BatchDone, Done, Started, Step, StepsDrawn
from engine.files import remove_partial_writes, shown_paths
from engine.images import check_pixels
from engine.forward import noise
from engine.forward.noise import NoiseRequest, NoiseSchedule, NoiseStrip
from engine.models.configs import latent_shape, native_size, read_scheduler_config, unet_side
from engine.models.devices import default_torch_threads, resolve_device
from engine.models.identity import file_sha256, identity_changes
from engine.models.registry import BUILTIN_DIR, BUILTINS, ModelRegistry
from engine.sampling import blend, unconditional
from engine.sampling.history import HistoryPage, HistoryQuery, ImageHistory, check_image_path
from engine.sampling.outputs import remove_stale_claims, save_png
from engine.sampling.pnginfo import PngInfo, png_info
from engine.sampling.replay import ReplayReport, cannot, export_bundle, read_bundle, verdict
from engine.sampling.compare import Column, ColumnResult, CompareDone, CompareRequest, CompareStarted, sigmas_at
from engine.sampling.img2img import (FIXED_SIZE, STRIP_STRENGTHS, Img2ImgRequest, StripFrame, output_size, sdedit_size,
                                    similarity, size_from, start_timestep)
from engine.sampling.schedulers import SCHEDULERS, scheduler_spec
from engine.sampling.attention import AttentionDone, PromptTokens, prompt_tokens, save_maps
from engine.sampling.txt2img import Txt2ImgRequest
from engine.sampling.views import DEFAULT_VIEWS, step_attention
from engine.sampling.unconditional import (
    PROBE_STEPS,
    UNCONDITIONAL_SCHEDULERS,
    RunEstimate,
    UnconditionalRequest,
    seconds_per_step,
)
from engine.training.base import SCRATCH
from engine.training.checkpoints import list_runs
from engine.training.data import UploadLimits, check_captioned, list_sources, save_uploads
from engine.training.jobs import TrainingManager, TrainStatus
from engine.training.request import RUN_NAME, TrainRequest, resume_request
from engine.validation import check_batch_count, check_choice, check_int, given
from engine.worker.child import MODEL_KIND, WorkerConfig, run_events
from engine.worker.process import DeviceWorker, RunRecord

log = logging.getLogger(__name__)
NORM_POINTS = 20  # the seed blend's norm chart: t = 0, 0.05, ..., 1


@dataclass(frozen=True)
class Folders:
    models_dir: Path  # user models and the Training tab's checkpoints
    data_dir: Path  # image folders for training
    outputs_dir: Path  # generated PNGs


class Workbench:
    def __init__(self, folders: Folders, device: str = "auto", *, worker: bool = True,
                 torch_threads: int | None = None, preview_interval: float = 0.1,
                 upload_limits: UploadLimits = UploadLimits(), model_cache_gb: float | None = None):
        """``worker``: sample in a process of its own (the page's way: see :mod:`engine.worker`); False
        samples in this process, on the calling thread. ``torch_threads``: intra-op threads for sampling
        (None: all cores but one on a CPU). ``preview_interval``: seconds between streamed steps.
        ``model_cache_gb``: the loaded models kept, in GB (None: a share of the memory they live in)."""
        self.folders = folders
        self.upload_limits = upload_limits
        self.placement = resolve_device(device)
        for folder in (folders.models_dir, folders.data_dir, folders.outputs_dir):
            Path(folder).mkdir(parents=True, exist_ok=True)
        # What a process killed mid-write left (a PNG, an upload's hidden folder) goes; nothing half-written is listed.
        for folder, pattern in ((folders.outputs_dir, "**/.*.tmp"), (folders.data_dir, ".*.tmp")):
            if removed := remove_partial_writes(folder, pattern):
                log.warning("removed %d partial write(s) of a killed process from %s", len(removed), folder)
        if removed := remove_stale_claims(folders.outputs_dir):  # the image numbers such a process had claimed
            log.warning("removed %d number claim(s) of a killed process from %s", len(removed), folders.outputs_dir)
        cache_bytes = None if model_cache_gb is None else int(model_cache_gb * 1e9)
        self.registry = ModelRegistry(folders.models_dir, self.placement, cache_bytes=cache_bytes)
        self.image_history = ImageHistory(folders.outputs_dir)  # the outputs dir's images, for History
        self.torch_threads = torch_threads or default_torch_threads(self.placement)
        # One sampling run on the device at a time. In this process the run holds the lock in its own thread
        # until its loop has really ended; the worker process takes its runs one at a time.
        self._device = threading.Lock()
        self.worker = DeviceWorker(WorkerConfig(
            models_dir=Path(folders.models_dir), outputs_dir=Path(folders.outputs_dir), device=device,
            torch_threads=self.torch_threads, min_interval=preview_interval,
            model_cache_bytes=cache_bytes)) if worker else None
        # One training job at a time, in the background; each checkpoint drops the run's cached pipeline,
        # so the Unconditional tab samples the new weights. accelerate picks mps itself under "auto".
        self.training = TrainingManager(folders.models_dir, folders.data_dir,
                                        device="auto" if device == "mps" else device,
                                        on_checkpoint=lambda name, path: self._forget(name))
        self._tokenizers: dict[tuple[str, float], object] = {}  # (folder, its tokenizer's mtime) -> tokenizer
        # Seconds a step of an unconditional (model, batch size) took here, and how it was measured.
        self._step_seconds: dict[tuple[str, int], tuple[float, str]] = {}

    def start(self) -> None:
        """Start the sampling worker now, so the first run does not wait for it to import torch."""
        if self.worker is not None:
            self.worker.start()

    def close(self) -> None:
        """Stop the sampling worker (the training job, if any, goes on until it ends or is stopped)."""
        if self.worker is not None:
            self.worker.close()

    def shown(self, text: str) -> str:
        """``text`` (a saved file's path, a code snippet, a status) as the page shows it: the models, data and
        outputs dirs written as ``models``, ``data`` and ``outputs`` (``outputs/txt2img/.../00001-7.png``), so
        nothing a person reads holds the server's absolute paths. Files handed to the page to serve stay real."""
        return shown_paths(text, {"models": self.folders.models_dir, "data": self.folders.data_dir,
                                  "outputs": self.folders.outputs_dir, "builtin_models": BUILTIN_DIR})

    def recent_runs(self) -> list[RunRecord]:
        """The worker's latest sampling runs, oldest first: when each was queued, began and ended, and how."""
        return self.worker.recent() if self.worker is not None else []

    def interrupt(self) -> bool:
        """Stop the sampling run that holds the device now, whoever started it (a page's, an API client's), at its
        next step, as its own Stop would; False when none does (or runs are made in this process)."""
        return self.worker.interrupt() if self.worker is not None else False

    def _forget(self, name: str) -> None:
        self.registry.forget(name)
        if self.worker is not None:
            self.worker.forget(name)

    # -- models ----------------------------------------------------------------------
    def list_models(self, kind: str) -> list[str]:
        """Built-ins of ``kind`` ("txt2img" or "unconditional") first, then the models dir's."""
        return self.registry.list_models(kind)

    def default_model(self, kind: str) -> str:
        """The built-in every tab of ``kind`` starts with; an empty model string means it."""
        return next(b.name for b in BUILTINS.values() if b.kind == kind)

    def schedulers(self, kind: str) -> tuple[str, ...]:
        """The scheduler names a tab of ``kind`` offers (and its requests accept), default first."""
        return UNCONDITIONAL_SCHEDULERS if kind == "unconditional" else tuple(SCHEDULERS)

    def list_loras(self, model: str = "") -> list[str]:
        """LoRAs under ``<models-dir>/loras/`` that fit the text-to-image ``model`` (the built-in when "")."""
        return self.registry.list_loras(model or self.default_model("txt2img"))

    def check_lora(self, model: str, lora: str) -> None:
        """Raise the :class:`InputError` a run of ``model`` with ``lora`` would end with: no such LoRA, or one
        trained on another kind of model."""
        self.registry.lora_file(model or self.default_model("txt2img"), lora)

    def default_size(self, model: str) -> tuple[int, int] | None:
        """(width, height) a text-to-image model was trained at, read from its configs only; None where
        that needs a download (hub ids) or the configs are unreadable."""
        folder = self._config_folder(model or self.default_model("txt2img"))
        return native_size(folder) if folder is not None else None

    def _config_folder(self, model: str) -> Path | None:
        """The local folder of ``model``'s configs; None for a hub id not downloaded, or a model not found."""
        try:
            return self.registry.config_folder(model)
        except ModelLoadError:
            return None

    # -- text to image ---------------------------------------------------------------
    def iter_txt2img(self, request: Txt2ImgRequest, *, cancel: CancelToken | None = None, history: str = "drawn",
                     views=DEFAULT_VIEWS, batch_count: int = 1) -> Iterator[Started | Step | Done | StepsDrawn | BatchDone]:
        """Load the request's model (the built-in when none is named), then denoise step by step. ``history``
        (one of ``HISTORY_MODES``) says when the previews of the steps the stream skipped are drawn: before
        ``Done`` ("drawn"), after it in a ``StepsDrawn`` ("after": the final image does not wait for them), or
        never ("streamed": a gap shows the nearest frame drawn for the stream). ``views``: the views (keys of
        ``engine.sampling.views.VIEWS``) the streamed steps carry besides x0 and x_t; the history has them all.
        ``batch_count`` > 1 makes that many runs, seeds s, s+1, ..., each saved, then a grid of them all
        (:meth:`_batch`)."""
        check_choice("history", history, HISTORY_MODES)
        request = replace(request, model=request.model or self.default_model("txt2img"))
        yield from self._batch("txt2img", request, batch_count,
                               lambda r: self._run("txt2img", r, cancel, history, views))

    # -- where each word lands (cross-attention maps) --------------------------------------
    def prompt_tokens(self, model: str, prompt: str) -> PromptTokens:
        """``prompt`` as text-to-image ``model``'s tokenizer splits it (the built-in when ""): its tokens, start and
        end included, the model's limit and what it cuts. An :class:`InputError` for a model with no cross-attention."""
        model = model or self.default_model("txt2img")
        if self.model_kind(model) != "txt2img":
            raise InputError(f"{model!r} is an unconditional model: it has no cross-attention and takes no prompt, so "
                             "no word has a map; pick a text-to-image model", field="model")
        return prompt_tokens(self._tokenizer(model), prompt or "")

    def _tokenizer(self, model: str):
        """``model``'s tokenizer (read once per folder and change of its files)."""
        from transformers import CLIPTokenizer

        ref = self.registry.resolve(model)
        folder = self.registry.config_folder(model)
        where = str(folder) if folder is not None else ref.location  # a hub id: from the cache, offline
        stamp = max((f.stat().st_mtime for f in (Path(where) / "tokenizer").glob("*")), default=0.0) \
            if folder is not None else 0.0
        key = (where, stamp)
        if key not in self._tokenizers:
            try:
                self._tokenizers[key] = CLIPTokenizer.from_pretrained(where, subfolder="tokenizer",
                                                                      local_files_only=True)
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"the tokenizer of {model!r} cannot be read: {exc}") from None
        return self._tokenizers[key]

    def iter_attention(self, request: Txt2ImgRequest, *,
                       cancel: CancelToken | None = None) -> Iterator[Started | Step | Done | AttentionDone]:
        """``request`` as :meth:`iter_txt2img` runs it (the same image), every step carrying the prompt tokens'
        cross-attention maps; after ``Done``, an :class:`AttentionDone` with the tokens, the maps and their
        ``.npz``, saved beside the image (``<image>.attention.npz``)."""
        request = replace(request, model=request.model or self.default_model("txt2img"))
        tokens = self.prompt_tokens(request.model, request.prompt)
        done = None
        for event in self._run("txt2img", request, cancel, "streamed", views=("attention",)):  # as /txt2img's
            if isinstance(event, Done):
                done = event
            yield event
        per_step = np.stack([step_attention(s) for s in done.steps]).astype(np.float32)
        image = Path(done.paths[0]) if done.paths else \
            Path(self.folders.outputs_dir) / f"attention-{done.info['seed']}.png"  # a run saved nowhere
        path = save_maps(image.with_suffix(".attention.npz"), tokens, per_step)
        yield AttentionDone(tokens=tokens, image=done.images[0], per_step=per_step, maps_file=str(path))

    # -- image to image (forward, then back) -------------------------------------------
    def model_kind(self, model: str) -> str:
        """"txt2img" or "unconditional": the kind of ``model`` (the text-to-image built-in when none is named)."""
        return self.registry.kind_of(model or self.default_model("txt2img"))

    def iter_img2img(self, request: Img2ImgRequest, *, cancel: CancelToken | None = None,
                     history: str = "drawn") -> Iterator[Started | Step | Done | StepsDrawn]:
        """Noise the request's image to its strength's timestep, then denoise it: with the prompt on a text-to-image
        model (as ``StableDiffusionImg2ImgPipeline``), or SDEdit on an unconditional one (the /ddpm loop)."""
        check_choice("history", history, HISTORY_MODES)
        request = replace(request, model=request.model or self.default_model("txt2img"))
        yield from self._run(self.check_img2img(request), request, cancel, history)

    def check_img2img(self, request: Img2ImgRequest) -> str:
        """The run kind ``request`` makes ("img2img" or "sdedit"), or the error it would end with, found without
        loading the model: its kind, its availability, a scheduler or steps an unconditional run does not take."""
        model = request.model or self.default_model("txt2img")
        kind = self.model_kind(model)
        self.check_model(model, kind)
        if kind == "txt2img":
            return "img2img"
        scheduler_spec(request.scheduler, UNCONDITIONAL_SCHEDULERS)
        self.img2img_size(request)  # a width or height SDEdit does not take
        train_steps = self.default_steps(model, "DDPM")
        if train_steps is not None:
            check_int(f"steps for this model (trained with {train_steps} timesteps)", request.num_inference_steps, 1,
                      train_steps)
        return "sdedit"

    def img2img_size(self, request: Img2ImgRequest) -> dict | None:
        """The size a run of ``request`` makes, read from its model's configs before it runs: ``{"width", "height",
        "size_from"}`` (in words, as the run's parameters say it); None where that needs the model downloaded.
        Raises the :class:`InputError` of a width or height an unconditional model (SDEdit) does not take."""
        model = request.model or self.default_model("txt2img")
        if self.model_kind(model) == "txt2img":
            model_size = self.default_size(model)
            if model_size is None:
                return None
            width, height = output_size(request.image.size, model_size, request.width, request.height)
            return {"width": width, "height": height, "size_from": size_from(request, model_size)}
        folder = self._config_folder(model)
        side = unet_side(folder) if folder is not None else None
        if side is None:
            return None
        width, height = sdedit_size(request, (side, side))
        return {"width": width, "height": height, "size_from": FIXED_SIZE}

    def img2img_start(self, model: str, scheduler: str, num_inference_steps: int, strength: float) -> dict:
        """Where a run of ``strength`` starts on ``model``'s schedule, before it runs: ``{"timestep", "steps_run",
        "num_train_timesteps"}``, read from its scheduler config."""
        model = model or self.default_model("txt2img")
        Img2ImgRequest(image=np.zeros((8, 8, 3), np.uint8), strength=strength,
                       num_inference_steps=num_inference_steps, scheduler=scheduler)  # the same checks as a run's
        config = read_scheduler_config(self.registry.resolve(model).location)
        t, steps_run = start_timestep(scheduler, config, num_inference_steps, strength)
        return {"timestep": t, "steps_run": steps_run, "num_train_timesteps": int(config["num_train_timesteps"])}

    def iter_strength_strip(self, request: Img2ImgRequest, *, strengths=STRIP_STRENGTHS,
                            cancel: CancelToken | None = None) -> Iterator[StripFrame]:
        """``request`` at each of ``strengths`` (one seed for all), one run after another on the device: each
        result, where it started, and how much of the original survives in it."""
        request = request.resolved()
        for strength in strengths:
            done = None
            for event in self.iter_img2img(replace(request, strength=strength), cancel=cancel, history="streamed"):
                if isinstance(event, Done):
                    done = event
            image = done.images[0]
            yield StripFrame(strength=strength, start_timestep=done.info["start_timestep"], image=image,
                             survives=similarity(request.image, image, request.resize_mode),
                             path=done.paths[0] if done.paths else "")

    @staticmethod
    def sample_image(name: str) -> Image.Image:
        """One of the forward process's sample images (``engine.forward.noise.SAMPLE_IMAGES``)."""
        check_choice("sample image", name, noise.SAMPLE_IMAGES)
        return noise.load_image(None, name)

    # -- compare -----------------------------------------------------------------------
    def compare_columns(self, request: CompareRequest) -> tuple[str, tuple]:
        """(the kind of the compared models, each column's request in values order), or the error the comparison
        would end with: a value its axis does not take, or models of different kinds."""
        models = [m or self.default_model("txt2img") for m in request.models]
        try:
            kinds = [self.model_kind(m) for m in models]
            for m, kind in zip(models, kinds):
                self.check_model(m, kind)
        except ModelLoadError as exc:
            if request.axis == "model":  # said beside the values, where the model was typed
                raise InputError(str(exc), field="values") from None
            raise
        for m, kind in zip(models[1:], kinds[1:]):
            if kind != kinds[0]:
                raise InputError(f"{m!r} is {_kind_words(kind)} model, but {models[0]!r} is {_kind_words(kinds[0])} "
                                 "one; the models compared must be of one kind", field="values")
        columns = request.columns(kinds[0])
        return kinds[0], tuple(replace(c, model=m) for c, m in zip(columns, models))

    def iter_compare(self, request: CompareRequest, *,
                     cancel: CancelToken | None = None) -> Iterator[object]:
        """Each column's run, one after another on the device: ``CompareStarted``, then for each column a
        ``Column`` and its run's events (``Started``, ``Step`` ..., ``Done``), then ``CompareDone``."""
        request = request.resolved()
        kind, columns = self.compare_columns(request)
        yield CompareStarted(axis=request.axis, values=request.values, requests=columns, kind=kind)
        results = []
        for index, (value, column) in enumerate(zip(request.values, columns)):
            yield Column(index=index, value=value)
            done = None
            for event in self._run(kind, column, cancel, "drawn"):
                if isinstance(event, Done):
                    done = event
                yield event
            results.append(ColumnResult(value=value, done=done, sigmas=self._sigmas(column.model, done)))
        info = {"axis": request.axis, "values": list(request.values), "seed": request.seed, "kind": kind,
                "columns": [r.summary() for r in results]}
        if kind == "txt2img":
            info.update(prompt=request.prompt, negative_prompt=request.negative_prompt)
        if request.axis == "seed blend":  # why a lerp midpoint washes out: the noise's norm along t
            info["seed_b"] = request.seed_b
            folder = self.registry.config_folder(columns[0].model)
            shape = latent_shape(folder, results[0].done.info["width"], results[0].done.info["height"]) if folder \
                else None
            if shape is not None:
                info["noise_norms"] = blend.noise_norms(request.seed, request.seed_b, shape,
                                                        [i / NORM_POINTS for i in range(NORM_POINTS + 1)])
        yield CompareDone(axis=request.axis, columns=tuple(results), info=info)

    def _sigmas(self, model: str, done: Done) -> tuple[float, ...]:
        """sigma at each of a run's steps, from its model's schedule (NaN where the schedule is unreadable)."""
        try:
            alpha_bar = noise.schedule_arrays(self.schedule_of_model(model))["alpha_bar"]
        except (WorkbenchError, KeyError, TypeError, ValueError, OSError):
            return (float("nan"),) * len(done.steps)
        return sigmas_at([s.timestep for s in done.steps], alpha_bar)

    # -- unconditional ---------------------------------------------------------------
    def iter_unconditional(self, request: UnconditionalRequest, *, cancel: CancelToken | None = None,
                           batch_count: int = 1) -> Iterator[Started | Step | Done | BatchDone]:
        """Load the request's model (the built-in when none is named), then denoise from pure noise;
        ``batch_count`` runs as :meth:`iter_txt2img` makes them. The run's time a step is kept for
        :meth:`estimate_unconditional` (a stopped run's too)."""
        request = replace(request, model=request.model or self.default_model("unconditional"))
        yield from self._batch("unconditional", request, batch_count,
                               lambda r: self._timed_unconditional(r, cancel))

    def _batch(self, kind: str, request, batch_count: int, run) -> Iterator:
        """``batch_count`` runs of ``request`` (``run(request)`` gives one run's events), seeds s, s+1, ... from
        its seed (drawn once where it is -1); each run's events are passed on, tagged in their info with
        ``batch_index`` and ``batch_count``; then a :class:`BatchDone` with the grid of all their images, saved
        beside them. One cancel token ends the whole batch: a stopped run raises and no later run starts."""
        # 1. One run is one run: nothing is tagged, no grid.
        check_batch_count(batch_count)
        batch_count = int(batch_count)
        if batch_count == 1:
            yield from run(request)
            return
        # 2. Seeds s .. s+N-1, all valid.
        seed = request.seed if request.seed >= 0 else secrets.randbelow(2**32)
        check_batch_count(batch_count, seed)
        # 3. The runs, one after another on the device's queue.
        dones: list[Done] = []
        for index in range(batch_count):
            for event in run(replace(request, seed=seed + index)):
                if isinstance(event, (Started, Done)):
                    event = replace(event, info={**event.info, "batch_index": index + 1, "batch_count": batch_count})
                if isinstance(event, Done):
                    dones.append(event)
                yield event
        # 4. Their images as one grid, saved beside them with the first run's parameters.
        images = [image for done in dones for image in done.images]
        grid = unconditional.image_grid(images)
        seeds = [d.info["seed"] for d in dones]
        info = {**dones[0].info, "seeds": seeds}
        first = dones[0].record  # the grid's settings are the first run's and the count: no run to replay alone
        record = {k: first[k] for k in ("format", "version", "kind", "request", "model") if k in first}
        path = save_png(grid, info, self.folders.outputs_dir, kind, suffix="-grid",
                        record={**record, "batch_count": batch_count, "seeds": seeds})
        yield BatchDone(seeds=tuple(d.info["seed"] for d in dones),
                        paths=tuple(p for d in dones for p in d.paths), grid=str(path), image=grid, info=info)

    def _timed_unconditional(self, request: UnconditionalRequest,
                             cancel: CancelToken | None) -> Iterator[Started | Step | Done]:
        """One unconditional run; its time a step is kept for :meth:`estimate_unconditional`."""
        last, done = None, None
        try:
            for event in self._run("unconditional", request, cancel):
                if isinstance(event, Step):
                    last = event
                elif isinstance(event, Done):
                    done = event
                yield event
        finally:
            key = (request.model, request.batch_size)
            if done is not None:
                self._step_seconds[key] = (seconds_per_step(done.steps), "the last run")
            elif last is not None and last.step >= PROBE_STEPS:  # stopped: its steps so far, past the warm-up
                self._step_seconds[key] = (last.elapsed / last.step, "the last run")

    def estimate_unconditional(self, request: UnconditionalRequest, *, probe: bool = True) -> RunEstimate | None:
        """How long ``request`` would take on this device, before it starts: its steps times the seconds a step
        of its model and batch size took in the last such run here, else (``probe``) in a probe run of
        ``PROBE_STEPS`` steps, saved nowhere, queued on the device like any run. None where nothing was
        measured (and ``probe`` is False) or the model's steps are unknown."""
        request = replace(request, model=request.model or self.default_model("unconditional"))
        steps = request.num_inference_steps or self.default_steps(request.model, request.scheduler)
        key = (request.model, request.batch_size)
        if steps is None:
            return None
        if key not in self._step_seconds and probe:
            done = list(self._run("probe", request, None))[-1]
            self._step_seconds.setdefault(key, (seconds_per_step(done.steps), f"a {PROBE_STEPS}-step probe"))
        if key not in self._step_seconds:
            return None
        seconds, measured_by = self._step_seconds[key]
        return RunEstimate(num_inference_steps=int(steps), seconds_per_step=seconds, measured_by=measured_by)

    @staticmethod
    def check_image(path: str | Path, field: str = "image") -> None:
        """Raise the :class:`InputError` an image file of more than :data:`engine.images.MAX_PIXELS` pixels gets,
        from its header alone: before anything decodes it whole."""
        check_pixels(path, field)

    def check_model(self, model: str, kind: str) -> None:
        """Raise the :class:`ModelLoadError` a run of ``model`` would end with, where that is known without
        loading it: unknown, outside the models dir, of the other kind, or an uncached hub id offline."""
        self.registry.check_available(model or self.default_model(kind), kind)

    def activity(self) -> str | None:
        """What holds the device now, in words ("a text-to-image run", "an unconditional run"), or None."""
        for record in reversed(self.recent_runs()):
            if record.started is not None and record.ended is None:
                return {"txt2img": "a text-to-image run", "probe": "a timing probe", "img2img": "an img2img run",
                        "sdedit": "an img2img run"}.get(record.kind, "an unconditional run")
        return None

    def _run(self, kind: str, request, cancel: CancelToken | None, history: str = "drawn",
             views=DEFAULT_VIEWS) -> Iterator[Started | Step | Done | StepsDrawn]:
        """A sampling run of ``kind`` (see ``MODEL_KIND``) on the worker, or here; what is known to fail is
        refused first. ``views``: the extra views streamed steps carry (here every view is drawn on first look)."""
        self.check_model(request.model, MODEL_KIND[kind])
        if kind == "txt2img":
            self.registry.lora_file(request.model, request.lora)  # a missing or unfitting LoRA, before the queue
        if self.worker is not None:
            yield from self.worker.iter_run(kind, request, cancel=cancel, history=history, views=views)
            return
        with self._device:
            check(cancel, 0)  # stopped while waiting for the device: nothing to load
            for event in run_events(self.registry, kind, request, cancel=cancel,
                                    outputs_dir=self.folders.outputs_dir, views=views):
                yield event
                if isinstance(event, Done) and history == "after":  # here every preview is drawn on first look
                    yield StepsDrawn(event.steps)

    def default_steps(self, model: str, scheduler: str) -> int | None:
        """The default steps for an unconditional ``model`` and ``scheduler``; None where its config is unreadable."""
        try:
            location = self.registry.resolve(model or self.default_model("unconditional")).location
            return unconditional.default_num_inference_steps(scheduler, read_scheduler_config(location))
        except (WorkbenchError, KeyError, TypeError, ValueError):
            return None

    @staticmethod
    def final_image(done: Done) -> Image.Image:
        """What a run ends with on the page: its image, or a batch as one grid, with the PNG parameters."""
        return unconditional.final_image(done)

    # -- history, PNG info, replay ----------------------------------------------------------
    def history_page(self, query: HistoryQuery = HistoryQuery()) -> HistoryPage:
        """A page of the outputs dir's images, newest first, filtered as ``query`` says."""
        return self.image_history.page(query)

    def history_image(self, path: str) -> Path:
        """History image ``path`` (relative to the outputs dir): its file, checked to be one."""
        return self.image_history.resolve(path)

    def history_thumbnail(self, path: str) -> Path:
        """What History's grid shows for ``path``: the image, or a smaller copy of a large one."""
        return self.image_history.thumbnail(path)

    def trash_image(self, path: str) -> str:
        """Move history image ``path`` to the trash folder inside the outputs dir; returns its new path there."""
        return self.image_history.trash(path)

    def read_png_info(self, image: str | Path) -> PngInfo:
        """What a PNG (ours, A1111/Forge's, ComfyUI's) says about how it was made, in this workbench's terms:
        a model that is not here is moved to what cannot be used, as are settings the image's tab refuses."""
        info = png_info(image, verify=True)
        settings, unused = dict(info.settings), list(info.unused)
        # 1. The model: its name, else A1111's name with .safetensors, where that is a model here.
        model = settings.pop("model", None)
        if model:
            found = next((m for m in (model, f"{model}.safetensors") if self._model_here(m, info.kind)), None)
            if found:
                settings["model"] = found
            else:
                unused.append(f"model {model!r} is not here (not a built-in, nor under the models dir); "
                              "the page's model is kept")
        # 2. A LoRA: here, and fitting the model the settings go to.
        if settings.get("lora"):
            try:
                self.registry.lora_file(settings.get("model") or self.default_model("txt2img"), settings["lora"])
            except WorkbenchError as exc:
                unused.append(f"LoRA {settings.pop('lora')!r} cannot be used here ({exc}); none is switched on")
                settings.pop("lora_scale", None)
        # 3. The scheduler: the unconditional tab offers fewer.
        if info.kind == "unconditional" and settings.get("scheduler") not in (None, *self.schedulers(info.kind)):
            unused.append(f"scheduler {settings.pop('scheduler')} is not offered for unconditional models")
        return replace(info, settings=settings, unused=tuple(unused))

    def _model_here(self, model: str, kind: str) -> bool:
        try:
            self.registry.check_available(model, kind)
        except ModelLoadError:
            return False
        return True

    def export_run(self, image: str | Path) -> dict:
        """The replay bundle of a saved image (a path under the outputs dir, relative to it or not): its run's
        record and the image's path, as "Export run" writes it to a file."""
        path = self._outputs_path(image)
        record = self.image_history.info(path).record
        if record is not None and "batch_count" in record and "images_sha256" not in record:
            raise InputError(f"{path} is the grid of a batch count's runs, not one run; export one of its images",
                             field="image")
        if record is None:
            raise InputError(f"{path} has no run record (saved before runs were recorded, or not by this workbench);"
                             " PNG Info shows its settings", field="image")
        return export_bundle(record, path)

    def _outputs_path(self, image: str | Path) -> str:
        """``image`` as History names it (relative to the outputs dir), checked to be an image there. Taken as
        History names it, as the page shows a saved file (``outputs/txt2img/...``), or as a loop returned it."""
        text = check_image_path(str(image or ""))
        path, outputs = Path(text), self.image_history.outputs_dir
        if not path.is_absolute() and not (outputs / path).is_file():
            if path.parts[:1] == ("outputs",) and (outputs / Path(*path.parts[1:])).is_file():
                text = Path(*path.parts[1:]).as_posix()  # as the page shows it (Workbench.shown)
            else:
                path = path.resolve()  # relative to here, as a loop saved it under a relative --outputs-dir
        if path.is_absolute():
            try:
                text = path.resolve().relative_to(outputs).as_posix()
            except ValueError:
                pass  # refused below, with History's own message
        self.image_history.resolve(text)
        return text

    def iter_replay(self, run_file: str | Path, *,
                    cancel: CancelToken | None = None) -> Iterator[Started | Step | Done | ReplayReport]:
        """Replay the run in ``run_file`` (a bundle "Export run" wrote, or a PNG this workbench saved): its events,
        then a :class:`ReplayReport` saying whether the images came out identical (see
        :mod:`engine.sampling.replay`). A model that is missing or changed ends it before anything runs."""
        # 1. The bundle, checked: ours, a format this version reads, a model name inside the models dir.
        bundle = read_bundle(run_file)
        model = bundle.request.model
        # 2. The model: here, and the same bytes as in the run.
        try:
            ref = self.registry.check_available(model, MODEL_KIND[bundle.kind])
            current = self.registry.identity(ref)
        except ModelLoadError as exc:
            yield cannot(f"the model {model!r} is not here ({exc})")
            return
        changes = identity_changes(bundle.record["model"], current)
        if changes:
            yield cannot(f"the model {model!r} here is not the run's: {'; '.join(changes)}")
            return
        lora = bundle.record.get("lora") or {}
        if lora:  # the LoRA too: here, fitting the model, and the same bytes
            try:
                path = self.registry.lora_file(model, lora.get("name", ""))
            except WorkbenchError as exc:
                yield cannot(f"the LoRA {lora.get('name')!r} is not here ({exc})")
                return
            if path is None or file_sha256(path) != lora.get("sha256"):
                yield cannot(f"the LoRA {lora.get('name')!r} here is not the run's: its file hashes otherwise")
                return
        # 3. The run again, on the device's queue like any other, then the verdict.
        done = None
        for event in self._run(bundle.kind, bundle.request, cancel, "streamed"):
            if isinstance(event, Done):
                done = event
            yield event
        yield verdict(bundle, done.record, done.images, done.paths, bundle.original or self._original(bundle))

    def _original(self, bundle) -> Image.Image | None:
        """The run's own image from the outputs dir, where the bundle names one that is still there."""
        try:
            path = self.image_history.resolve(bundle.image or "")
            with Image.open(path) as im:
                return im.copy()
        except (WorkbenchError, OSError):
            return None

    # -- the forward process -----------------------------------------------------------
    @staticmethod
    def add_noise(request: NoiseRequest, image=None) -> NoiseStrip:
        """x_t for each of the request's timesteps, one noise sample for all."""
        return noise.add_noise(request, image)

    @staticmethod
    def schedule_arrays(schedule: NoiseSchedule) -> dict[str, np.ndarray]:
        """beta_t, alpha_bar_t, sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t) and log SNR for t = 0..T-1."""
        return noise.schedule_arrays(schedule)

    @staticmethod
    def visited_timesteps(scheduler: str, num_inference_steps: int, schedule: NoiseSchedule) -> tuple[int, ...]:
        """The timesteps ``scheduler`` visits in ``num_inference_steps`` steps on ``schedule``."""
        return noise.visited_timesteps(scheduler, num_inference_steps, schedule)

    def schedule_of_model(self, model: str) -> NoiseSchedule:
        """The noise schedule ``model`` was trained with, from its scheduler config."""
        try:
            return noise.schedule_of_model(self.registry.resolve(model).location)
        except ModelLoadError as exc:  # it names the config's folder
            raise ModelLoadError(self.registry.shown(str(exc))) from exc

    def schedule_facts(self, schedule: NoiseSchedule, scheduler: str = "DDIM", num_inference_steps: int = 10,
                       timestep_spacing: str | None = None, model: str | None = None) -> dict:
        """What ``schedule`` (``model``'s own where one is named) leaves at T, and the timesteps ``scheduler``
        visits under each spacing (with ``model``'s scheduler config: its steps_offset and spacing count)."""
        if model:
            schedule = self.schedule_of_model(model)
            config = read_scheduler_config(self.registry.resolve(model).location)
            return noise.schedule_facts(schedule, scheduler, num_inference_steps, timestep_spacing, config)
        return noise.schedule_facts(schedule, scheduler, num_inference_steps, timestep_spacing)

    def list_schedule_models(self) -> list[str]:
        """Models whose schedule the Noise tab can show: every model with a scheduler config."""
        return self.list_models("unconditional") + [m for m in self.list_models("txt2img")
                                                    if not m.endswith(".safetensors")]

    # -- training --------------------------------------------------------------------
    def list_training_data(self) -> list[str]:
        """``digits``, then the folders of images under the data dir."""
        return list_sources(self.folders.data_dir)

    def save_training_upload(self, files: list[str | Path], name: str = "") -> str:
        """Uploaded images and zips saved as a new folder under the data dir; returns its name."""
        return save_uploads(files, self.folders.data_dir, name, self.upload_limits).name

    def list_runs(self) -> list[str]:
        """Runs under the models dir with a complete checkpoint: the ones that can be resumed."""
        return list_runs(self.folders.models_dir)

    def run_settings(self, run_name: str) -> TrainRequest:
        """The request ``run_name`` was started with, set to resume."""
        return resume_request(self.folders.models_dir, _checked_run_name(run_name))

    def training_base_size(self, start_from: str, method: str = "full") -> int | None:
        """The resolution a run starting from ``start_from`` trains at (its model's own); None for "scratch", a hub
        id not downloaded, or unreadable configs."""
        if not start_from or start_from == SCRATCH:
            return None
        try:
            folder = self.registry.config_folder(start_from)
        except ModelLoadError:
            return None
        if folder is None:
            return None
        if method == "lora":
            size = native_size(folder)
            return size[0] if size else None
        return unet_side(folder)

    def start_training(self, request: TrainRequest) -> TrainStatus:
        """Start ``request`` in the background; returns once its first step is about to run."""
        return self.training.start(request)

    def check_training(self, request: TrainRequest) -> None:
        """What starting ``request`` would be refused for at once, found without reading an image: a LoRA run's
        data must have captions (the built-in ``digits`` have none)."""
        if request.method == "lora":
            check_captioned(request.data)

    def resume_training(self, run_name: str, **changes) -> TrainStatus:
        """Continue ``run_name`` from its checkpoint; ``changes`` may only touch run control (steps, intervals)."""
        return self.training.start(resume_request(self.folders.models_dir, _checked_run_name(run_name), **changes))

    def stop_training(self, wait: float | None = None) -> TrainStatus:
        """Ask the job to save a checkpoint and end; with ``wait``, wait up to that many seconds for it."""
        status = self.training.stop()
        return self.training.wait(wait) if wait else status

    def iter_unconditional_views(self, request: UnconditionalRequest, views, *, cancel=None, batch_count: int = 1):
        """:meth:`iter_unconditional` whose streamed steps carry ``views`` too (eps, v; its time is not kept)."""
        return self._batch("unconditional", replace(request, model=request.model or self.default_model(
            "unconditional")), batch_count, lambda r: self._run("unconditional", r, cancel, views=views))


def _kind_words(kind: str) -> str:
    return {"txt2img": "a text-to-image", "unconditional": "an unconditional"}[kind]


def _checked_run_name(run_name: str) -> str:
    """Run names are plain folder names: nothing that could point outside the models dir."""
    run_name = (run_name.strip() if isinstance(run_name, str) else run_name) or ""
    if not isinstance(run_name, str) or not RUN_NAME.match(run_name):
        raise InputError(f"run name {given(run_name)} is not allowed; give the name of a run under the models dir "
                         "(letters, digits, '.', '_' or '-')")
    return run_name
