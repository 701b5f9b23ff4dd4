"""The engine's front door: one object per process that holds the device, the models and the folders. Everything the
page can do, a Python caller can do through its methods, each delegated to its wing (documented there)."""

from __future__ import annotations

import functools
import logging
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from PIL import Image

from engine.cancel import CancelToken
from engine.events import HISTORY_MODES, BatchDone, Done, Started, Step, StepsDrawn
from engine.files import Folders, shown_paths
from engine.images import check_pixels
from engine.forward import noise
from engine.models.devices import default_torch_threads, resolve_device
from engine.models.registry import BUILTIN_DIR, ModelRegistry, default_model
from engine.models.tokenizers import Tokenizers
from engine.records import runs
from engine.records.history import HistoryPage, HistoryQuery
from engine.records.outputs import remove_stale_claims
from engine.records.pnginfo import PngInfo
from engine.records.policy import Records
from engine.records.replay import ReplayReport
from engine.sampling import attention, compare, img2img, prerun, txt2img, unconditional
from engine.sampling.views import DEFAULT_VIEWS
from engine.training.base import base_size
from engine.training.checkpoints import list_runs
from engine.training.data import list_sources
from engine.training.uploads import UploadLimits, save_uploads
from engine.training.jobs import TrainingManager, TrainStatus
from engine.training.request import TrainRequest, check_startable, checked_run_name, resume_request
from engine.validation import check_choice
from engine.worker.child import WorkerConfig
from engine.worker.process import DeviceWorker, RunRecord
from engine.worker.runs import Runs, iter_batch
from engine.worker.timing import StepTimes

log = logging.getLogger(__name__)


class Workbench:
    def __init__(self, folders: Folders, device: str = "auto", *, worker: bool = True,
                 torch_threads: int | None = None, preview_interval: float = 0.1,
                 upload_limits: UploadLimits = UploadLimits(), model_cache_gb: float | None = None):
        """``worker``: sample in a process of its own (:mod:`engine.worker`), else here; ``torch_threads``: for sampling
        (None: all cores but one on a CPU); ``preview_interval``: seconds between streamed steps; ``model_cache_gb``:
        the loaded models kept, in GB (None: a share of the memory they live in)."""
        self.folders = folders
        self.upload_limits = upload_limits
        self.placement = resolve_device(device)
        folders.prepare()  # created, and cleared of a killed process's partial writes
        if removed := remove_stale_claims(folders.outputs_dir):  # the image numbers such a process had claimed
            log.warning("removed %d number claim(s) of a killed process from %s", len(removed), folders.outputs_dir)
        cache_bytes = None if model_cache_gb is None else int(model_cache_gb * 1e9)
        self.registry = ModelRegistry(folders.models_dir, self.placement, cache_bytes=cache_bytes)
        # History, PNG Info, Export run and Replay's checks; replays run on the device's queue (_run).
        self.records = Records(folders.outputs_dir, self.registry, self._run, self.default_model)
        self.torch_threads = torch_threads or default_torch_threads(self.placement)
        config = WorkerConfig(models_dir=Path(folders.models_dir), outputs_dir=Path(folders.outputs_dir), device=device,
                              torch_threads=self.torch_threads, min_interval=preview_interval,
                              model_cache_bytes=cache_bytes)
        self.worker = DeviceWorker(config) if worker else None
        self.runs = Runs(self.registry, self.worker, folders.outputs_dir)  # one sampling run on the device at a time
        self.step_times = StepTimes(self.registry, self.runs)  # unconditional runs' seconds a step, for estimates
        self.tokenizers = Tokenizers(self.registry)
        # One training job at a time, in the background; each checkpoint drops the run's cached pipeline,
        # so the Unconditional tab samples the new weights. accelerate picks mps itself under "auto".
        self.training = TrainingManager(folders.models_dir, folders.data_dir,
                                        device="auto" if device == "mps" else device,
                                        on_checkpoint=lambda name, path: self.runs.forget(name))

    def start(self) -> None:
        """Start the sampling worker now, so the first run does not wait for it to import torch."""
        self.runs.start()

    def close(self) -> None:
        """Stop the sampling worker (the training job, if any, goes on until it ends or is stopped)."""
        self.runs.close()

    def shown(self, text: str) -> str:
        """``text`` as the page shows it: the models, data and outputs dirs as ``models``, ``data``, ``outputs``."""
        return shown_paths(text, {"models": self.folders.models_dir, "data": self.folders.data_dir,
                                  "outputs": self.folders.outputs_dir, "builtin_models": BUILTIN_DIR})

    def recent_runs(self) -> list[RunRecord]:
        """The worker's latest sampling runs, oldest first: when each was queued, began and ended, and how."""
        return self.runs.recent()

    def interrupt(self) -> bool:
        """Stop the run that holds the device now, whoever started it, at its next step; False when none does."""
        return self.runs.interrupt()

    def activity(self) -> str | None:
        """What holds the device now, in words ("a text-to-image run", "an unconditional run"), or None."""
        return self.runs.activity()

    def _run(self, kind: str, request, cancel: CancelToken | None, history: str = "drawn",
             views=DEFAULT_VIEWS) -> Iterator[Started | Step | Done | StepsDrawn]:
        """A sampling run of ``kind`` on the device's queue (:class:`engine.worker.runs.Runs`; replay's way in)."""
        return self.runs(kind, request, cancel, history, views)

    # -- models ----------------------------------------------------------------------
    def list_models(self, kind: str) -> list[str]:
        """Built-ins of ``kind`` ("txt2img" or "unconditional") first, then the models dir's."""
        return self.registry.list_models(kind)

    default_model = staticmethod(default_model)  # the built-in every tab of a kind starts with ("" means it)
    schedulers = staticmethod(prerun.scheduler_names)  # the schedulers a tab of a kind offers, default first

    def model_kind(self, model: str) -> str:
        """"txt2img" or "unconditional": the kind of ``model`` (the text-to-image built-in when none is named)."""
        return self.registry.kind_of(model or default_model("txt2img"))

    def check_model(self, model: str, kind: str) -> None:
        """Raise the :class:`ModelLoadError` a run of ``model`` would end with, where known without loading it."""
        self.registry.check_available(model or default_model(kind), kind)

    def list_loras(self, model: str = "") -> list[str]:
        """LoRAs under ``<models-dir>/loras/`` that fit the text-to-image ``model`` (the built-in when "")."""
        return self.registry.list_loras(model or default_model("txt2img"))

    def check_lora(self, model: str, lora: str) -> None:
        """Raise the :class:`InputError` a run of ``model`` with ``lora`` would end with (missing, or unfitting)."""
        self.registry.lora_file(model or default_model("txt2img"), lora)

    def default_size(self, model: str) -> tuple[int, int] | None:
        """(width, height) a text-to-image model was trained at, from its configs (:func:`prerun.default_size`)."""
        return prerun.default_size(self.registry, model)

    @staticmethod
    def check_image(path: str | Path, field: str = "image") -> None:
        """Raise the :class:`InputError` an image file of too many pixels gets, from its header alone."""
        check_pixels(path, field)

    # -- sampling: text to image, attention, compare, image to image, unconditional ----
    def iter_txt2img(self, request: txt2img.Txt2ImgRequest, *, cancel: CancelToken | None = None,
                     history: str = "drawn", views=DEFAULT_VIEWS,
                     batch_count: int = 1) -> Iterator[Started | Step | Done | StepsDrawn | BatchDone]:
        """Denoise step by step (``history``, ``views``: as ``DeviceWorker.iter_run``), ``batch_count`` runs."""
        check_choice("history", history, HISTORY_MODES)
        run = functools.partial(self.runs, "txt2img", cancel=cancel, history=history, views=views)
        yield from iter_batch("txt2img", request, batch_count, run, self.folders.outputs_dir)

    def prompt_tokens(self, model: str, prompt: str) -> attention.PromptTokens:
        """``prompt`` as text-to-image ``model``'s tokenizer splits it (the built-in when "")."""
        return attention.model_prompt_tokens(self.registry, self.tokenizers, model, prompt)

    def iter_attention(self, request: txt2img.Txt2ImgRequest, *,
                       cancel: CancelToken | None = None) -> Iterator[Started | Step | Done | attention.AttentionDone]:
        """``request`` as :meth:`iter_txt2img` runs it, with its tokens' cross-attention maps (``AttentionDone``)."""
        return attention.iter_attention(request, self.registry, self.tokenizers, self.runs, self.folders.outputs_dir,
                                        cancel)

    def compare_columns(self, request: compare.CompareRequest) -> tuple[str, tuple]:
        """(the kind of the compared models, each column's request), or the error the comparison would end with."""
        return compare.compare_columns(self.registry, request)

    def iter_compare(self, request: compare.CompareRequest, *, cancel: CancelToken | None = None) -> Iterator[object]:
        """Each column's run, one after another on the device (:func:`engine.sampling.compare.iter_compare`)."""
        return compare.iter_compare(request, self.registry, self.runs,
                                    functools.partial(noise.run_sigmas, self.registry), cancel=cancel)

    def iter_img2img(self, request: img2img.Img2ImgRequest, *, cancel: CancelToken | None = None,
                     history: str = "drawn") -> Iterator[Started | Step | Done | StepsDrawn]:
        """Noise the request's image to its strength's timestep, then denoise it (img2img, or SDEdit: /ddpm's loop)."""
        check_choice("history", history, HISTORY_MODES)
        request = replace(request, model=request.model or default_model("txt2img"))
        yield from self.runs(self.check_img2img(request), request, cancel, history)

    def check_img2img(self, request: img2img.Img2ImgRequest) -> str:
        """The run kind ``request`` makes ("img2img" or "sdedit"), or the error it would end with (no model load)."""
        return prerun.check_img2img(self.registry, request)

    def img2img_size(self, request: img2img.Img2ImgRequest) -> dict | None:
        """The size a run of ``request`` makes, from its model's configs (:func:`prerun.img2img_size`)."""
        return prerun.img2img_size(self.registry, request)

    def img2img_start(self, model: str, scheduler: str, num_inference_steps: int, strength: float,
                      timestep_spacing: str = "") -> dict:
        """Where a run of ``strength`` starts on ``model``'s schedule, before it runs (:func:`prerun.img2img_start`)."""
        return prerun.img2img_start(self.registry, model, scheduler, num_inference_steps, strength, timestep_spacing)

    def iter_strength_strip(self, request: img2img.Img2ImgRequest, *, strengths=img2img.STRIP_STRENGTHS,
                            cancel: CancelToken | None = None) -> Iterator[img2img.StripFrame]:
        """``request`` at each of ``strengths`` (one seed for all), one run after another on the device."""
        return prerun.iter_strength_strip(request, self.iter_img2img, strengths=strengths, cancel=cancel)

    def iter_unconditional(self, request: unconditional.UnconditionalRequest, *, cancel: CancelToken | None = None,
                           batch_count: int = 1, views=DEFAULT_VIEWS) -> Iterator[Started | Step | Done | BatchDone]:
        """Denoise from pure noise, ``batch_count`` runs as :meth:`iter_txt2img` (``views``: as there; eps and v
        too); timed for the estimates."""
        run = functools.partial(self.step_times.timed, cancel=cancel, views=views)
        yield from iter_batch("unconditional", request, batch_count, run, self.folders.outputs_dir)

    def estimate_unconditional(self, request: unconditional.UnconditionalRequest, *,
                               probe: bool = True) -> unconditional.RunEstimate | None:
        """How long ``request`` would take on this device, before it starts (:meth:`StepTimes.estimate`)."""
        return self.step_times.estimate(request, probe=probe)

    def default_steps(self, model: str, scheduler: str) -> int | None:
        """The default steps for an unconditional ``model`` and ``scheduler``; None where its config is unreadable."""
        return prerun.default_steps(self.registry, model, scheduler)

    @staticmethod
    def final_image(done: Done) -> Image.Image:
        """What a run ends with on the page: its image, or a batch as one grid, with the PNG parameters."""
        return runs.final_image(done)

    # -- history, PNG info, replay ----------------------------------------------------------
    def history_page(self, query: HistoryQuery = HistoryQuery()) -> HistoryPage:
        """A page of the outputs dir's images, newest first, filtered as ``query`` says."""
        return self.records.history.page(query)

    def history_image(self, path: str) -> Path:
        """History image ``path`` (relative to the outputs dir): its file, checked to be one."""
        return self.records.history.resolve(path)

    def history_thumbnail(self, path: str) -> Path:
        """What History's grid shows for ``path``: the image, or a smaller copy of a large one."""
        return self.records.history.thumbnail(path)

    def trash_image(self, path: str) -> str:
        """Move history image ``path`` to the trash folder inside the outputs dir; returns its new path there."""
        return self.records.history.trash(path)

    def read_png_info(self, image: str | Path) -> PngInfo:
        """What a PNG (ours, A1111/Forge's, ComfyUI's) says about how it was made, in this workbench's terms."""
        return self.records.read_png_info(image)

    def export_run(self, image: str | Path) -> dict:
        """The replay bundle of a saved image (a path under the outputs dir), as "Export run" writes it."""
        return self.records.export_run(image)

    def iter_replay(self, run_file: str | Path, *,
                    cancel: CancelToken | None = None) -> Iterator[Started | Step | Done | ReplayReport]:
        """Replay the run in ``run_file`` (an exported run or a PNG saved here): its events, then a verdict."""
        yield from self.records.iter_replay(run_file, cancel=cancel)


    # -- the forward process -----------------------------------------------------------
    add_noise = staticmethod(noise.add_noise)  # x_t for each of the request's timesteps, one noise sample for all
    schedule_arrays = staticmethod(noise.schedule_arrays)  # beta_t, alpha_bar_t, ... and log SNR for t = 0..T-1
    visited_timesteps = staticmethod(noise.visited_timesteps)  # what a scheduler visits in its steps on a schedule
    sample_image = staticmethod(noise.sample_image)  # one of the forward process's sample images, by name

    def schedule_of_model(self, model: str) -> noise.NoiseSchedule:
        """The noise schedule ``model`` was trained with, from its scheduler config."""
        return noise.model_schedule(self.registry, model)

    def schedule_facts(self, schedule: noise.NoiseSchedule, scheduler: str = "DDIM", num_inference_steps: int = 10,
                       timestep_spacing: str | None = None, model: str | None = None) -> dict:
        """What ``schedule`` (``model``'s own where one is named) leaves at T, and what ``scheduler`` visits."""
        return noise.model_schedule_facts(self.registry, schedule, scheduler, num_inference_steps, timestep_spacing,
                                          model)

    def list_schedule_models(self) -> list[str]:
        """Models whose schedule the Noise tab can show: every model with a scheduler config."""
        return noise.schedule_models(self.registry)

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
        return resume_request(self.folders.models_dir, checked_run_name(run_name))

    def training_base_size(self, start_from: str, method: str = "full") -> int | None:
        """The resolution a run starting from ``start_from`` trains at (:func:`engine.training.base.base_size`)."""
        return base_size(self.registry, start_from, method)

    check_training = staticmethod(check_startable)  # what starting a request would be refused for at once

    def start_training(self, request: TrainRequest) -> TrainStatus:
        """Start ``request`` in the background; returns once its first step is about to run."""
        return self.training.start(request)

    def resume_training(self, run_name: str, **changes) -> TrainStatus:
        """Continue ``run_name`` from its checkpoint; ``changes`` may only touch run control (steps, intervals)."""
        return self.training.start(resume_request(self.folders.models_dir, checked_run_name(run_name), **changes))

    def stop_training(self, wait: float | None = None) -> TrainStatus:
        """Ask the job to save a checkpoint and end; with ``wait``, wait up to that many seconds for it."""
        status = self.training.stop()
        return self.training.wait(wait) if wait else status
