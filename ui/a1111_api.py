"""AUTOMATIC1111's HTTP dialect (``/sdapi/v1/...``) on the page's server and the page's device queue.

A front like the tabs: it reaches the engine only through the facade's methods that ``app.py`` passes to
:func:`build`. Each generation is one event of Gradio's queue with the page's ``DEVICE_QUEUE`` concurrency id, so
an API run waits behind the page's runs (and theirs behind it) and counts in the queue the page shows. The route
puts a :class:`Job` in that queue and awaits it; the queued event runs the job's engine call (the one the page's
/txt2img and /img2img make) and keeps its latest step for ``/progress``. ``/interrupt`` ends the run that holds the
device, whoever started it, as the page's Stop ends the page's: the run stops at its next step and its record says
"stopped".

Request and response shapes follow A1111's ``modules/api/models.py``; fields this workbench has no use for are
accepted and listed in the response's ``info`` under ``ignored_by_workbench``. Errors are A1111's JSON
(``{"error", "detail", "body", "errors"}``): an unknown sampler or model is 404, a bad value 422 naming the field.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import io
import itertools
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gradio as gr
from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from PIL import Image

from engine.cancel import CancelToken
from engine.errors import Cancelled, InputError, ModelLoadError, WorkbenchError
from engine.events import Done, Started, Step
from engine.sampling.img2img import Img2ImgRequest
from engine.sampling.txt2img import Txt2ImgRequest
from ui import gradio_compat
from ui.common import DEVICE_QUEUE, stream_updates

log = logging.getLogger(__name__)

PREFIX = "/sdapi/v1"
# A1111's names of its resize modes (img2img's resize_mode 0, 1, 2); 3 (latent upscale) is not offered.
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill")
# A1111 1.9+ splits a sampler into a sampler and a scheduler; ours are whole ("DPM++ 2M Karras").
SCHEDULERS = {"automatic": "", "karras": " Karras"}  # A1111 scheduler name -> the suffix of our sampler's name
DEFAULT_SAMPLER = "Euler"  # A1111's sampler_index default, used when neither sampler_name nor sampler_index is sent
# The engine's field names (as its messages say them) -> A1111's.
A1111_FIELDS = {"prompt": "prompt", "negative prompt": "negative_prompt", "steps": "steps",
                "guidance scale": "cfg_scale", "scheduler": "sampler_name", "seed": "seed", "width": "width",
                "height": "height", "strength": "denoising_strength", "image": "init_images", "lora": "prompt",
                "LoRA scale": "prompt", "batch count": "n_iter", "model": "sd_model_checkpoint",
                "resize mode": "resize_mode"}
# A1111's fields each route reads; any other field sent with a value other than nothing (null, false, 0, "", [],
# {}) or A1111's own default is accepted and listed in info["ignored_by_workbench"].
USED = {"txt2img": {"prompt", "negative_prompt", "seed", "steps", "cfg_scale", "width", "height", "sampler_name",
                    "sampler_index", "scheduler", "batch_size", "n_iter", "override_settings",
                    "override_settings_restore_afterwards", "send_images", "save_images", "force_task_id"}}
USED["img2img"] = USED["txt2img"] | {"init_images", "denoising_strength", "resize_mode", "mask", "include_init_images"}
DEFAULTS = {"hr_scale": 2.0, "sampler_index": DEFAULT_SAMPLER, "seed_resize_from_h": -1, "seed_resize_from_w": -1,
            "subseed": -1, "mask_blur_x": 4, "mask_blur_y": 4, "mask_blur": 4, "inpaint_full_res": True,
            "mask_round": True}
LORA_TAG = re.compile(r"<lora:([^:>]*)(?::([^:>]*))?(?::[^>]*)?>")


class ApiError(Exception):
    """An answer other than 200, in A1111's error shape."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status,
                            content={"error": "HTTPException", "detail": self.detail, "body": "",
                                     "errors": f"{self.status}: {self.detail}"},
                            headers={"WWW-Authenticate": "Basic"} if self.status == 401 else None)


def unprocessable(exc: InputError) -> ApiError:
    """422 naming the A1111 field a bad value came in, then the engine's message."""
    name = A1111_FIELDS.get(exc.field or "", exc.field or "request")
    return ApiError(422, f"{name}: {exc}")


@dataclass
class Job:
    """One API request's runs, from the queue to its images; what /progress reads."""

    id: str
    kind: str  # "txt2img" or "img2img"
    make_events: Callable[[CancelToken], Any]  # cancel -> the engine's events
    count: int  # runs (a batch count's)
    cancel: CancelToken = field(default_factory=CancelToken)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    started: float | None = None  # time.monotonic() when its first run began
    run_index: int = 0  # the run of the batch under way, 0-based
    step: Step | None = None  # the latest streamed step
    done: list[Done] = field(default_factory=list)
    error: BaseException | None = None
    interrupted: bool = False
    skipped: bool = False

    def note(self, event) -> None:
        """Keep what /progress shows; nothing is sent to Gradio (the route answers the client)."""
        if isinstance(event, Started):
            self.started = self.started or time.monotonic()
            self.run_index = int(event.info.get("batch_index", 1)) - 1
            self.step = None
        elif isinstance(event, Step):
            self.step = event
        elif isinstance(event, Done):
            self.done.append(event)


class A1111Api:
    """The /sdapi/v1 routes (:attr:`routes`, for the FastAPI app) and the queued event that runs their jobs."""

    def __init__(self, *, iter_txt2img, iter_img2img, check_model, check_lora, list_models, list_loras,
                 default_model: str, samplers, interrupt, shown, auth: tuple[str, str] | None = None):
        self.iter_txt2img, self.iter_img2img = iter_txt2img, iter_img2img
        self.check_model, self.check_lora, self.list_models, self.list_loras = (check_model, check_lora,
                                                                                list_models, list_loras)
        self.interrupt_device, self.shown = interrupt, shown
        self.sampler_names = tuple(samplers)  # the engine's scheduler names: A1111's sampler names
        self.auth = auth
        self.model = default_model  # /options' sd_model_checkpoint: the model of requests that name none
        self.jobs: dict[str, Job] = {}  # queued or running, by id
        self.current: Job | None = None  # the one running
        self._ids = itertools.count(1)
        self.fn_index: int | None = None
        self._spent: list[str] = []  # Gradio event ids of finished jobs, whose messages are dropped
        self.routes = [APIRoute(PREFIX + path, self._route(handler), methods=[method], name=f"sdapi {path}",
                                include_in_schema=True)
                       for method, path, handler in (
                           ("POST", "/txt2img", self.txt2img), ("POST", "/img2img", self.img2img),
                           ("GET", "/progress", self.progress), ("POST", "/interrupt", self.interrupt),
                           ("POST", "/skip", self.skip), ("GET", "/samplers", self.samplers),
                           ("GET", "/schedulers", self.schedulers), ("GET", "/sd-models", self.sd_models),
                           ("GET", "/loras", self.loras), ("GET", "/options", self.get_options),
                           ("POST", "/options", self.set_options), ("GET", "/scripts", self.scripts),
                           ("POST", "/png-info", self.png_info), ("POST", "/refresh-checkpoints", self.refresh))]

    # -- plumbing: auth, errors, the queue -------------------------------------------------------------
    def _route(self, handler):
        @functools.wraps(handler)
        async def endpoint(request: Request):
            try:
                self._check_login(request)
                result = await handler(request)
            except ApiError as exc:
                return exc.response()
            except InputError as exc:
                return unprocessable(exc).response()
            except ModelLoadError as exc:
                return ApiError(404, str(exc)).response()
            except WorkbenchError as exc:
                return ApiError(500, str(exc)).response()
            except Exception:
                log.exception("unexpected error in %s", request.url.path)
                return ApiError(500, "Internal error; the server log has the details").response()
            return JSONResponse(result)
        return endpoint

    def _check_login(self, request: Request) -> None:
        """--auth: HTTP basic with the app's user and password, as A1111's --api-auth."""
        if self.auth is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = password = ""
        if not (scheme.lower() == "basic" and secrets.compare_digest(user, self.auth[0])
                and secrets.compare_digest(password, self.auth[1])):
            raise ApiError(401, "Incorrect username or password")

    def register(self) -> None:
        """Inside the page's ``gr.Blocks``: the hidden event that runs a job on the device queue."""
        job_id = gr.Textbox(visible=False)
        trigger = gr.Button(visible=False)
        event = trigger.click(self._run_job, inputs=job_id, outputs=None, api_visibility="private",
                              preprocess=False, postprocess=False, show_progress="hidden",
                              concurrency_id=DEVICE_QUEUE, concurrency_limit=1)
        self.fn_index = event["id"]  # the fn index Gradio queues it by

    async def _enqueue(self, job: Job, request: Request) -> None:
        """Put ``job`` in Gradio's queue behind the page's events, as the page's own join does
        (``gradio_compat.queue_push``; ``tests/ui/test_a1111_api.py`` runs it beside the page)."""
        self._forget_spent(request.app)
        self.jobs[job.id] = job
        ok, detail, state = await gradio_compat.queue_push(request.app, request, self.fn_index, [job.id])
        if not ok:
            self.jobs.pop(job.id, None)
            raise ApiError(503 if state == "queue_full" else 500, detail)
        try:
            await job.finished.wait()
        finally:
            self.jobs.pop(job.id, None)
            self._spent.append(detail)  # the event's id, also its session's (none was given)

    def _forget_spent(self, app) -> None:
        """Nobody reads the messages Gradio keeps for a job's event (the route answers): dropped once Gradio is done
        with the event."""
        self._spent = [event_id for event_id in self._spent if not gradio_compat.forget_event(app, event_id)]

    async def _run_job(self, job_id: str) -> None:
        """The queued event: the job's engine call, on the device queue. Never raises (nobody reads Gradio's
        messages for it): what went wrong is kept on the job for its route."""
        job = self.jobs.get(job_id)
        if job is None:
            return
        self.current = job
        try:
            async for _ in stream_updates(job.make_events, job.note, cancel=job.cancel):
                pass
        except BaseException as exc:  # noqa: BLE001  (Cancelled included: the route answers with what ran)
            job.error = exc
        finally:
            self.current = None
            job.finished.set()

    async def _generate(self, request: Request, kind: str, make_events, count: int) -> Job:
        job = Job(id=f"{kind}-{next(self._ids)}-{secrets.token_hex(4)}", kind=kind, make_events=make_events,
                  count=count)
        await self._enqueue(job, request)
        if job.error is not None and not isinstance(job.error, Cancelled):
            raise job.error
        return job

    # -- generation ----------------------------------------------------------------------------------
    async def txt2img(self, request: Request) -> dict:
        body = await json_body(request)
        settings, ignored = self._common(body, "txt2img")
        txt = Txt2ImgRequest(**settings["request"], width=_opt(body, "width"), height=_opt(body, "height"))
        self.check_lora(txt.model, txt.lora)
        count = settings["count"]

        def make_events(cancel):
            return self.iter_txt2img(txt, cancel=cancel, history="streamed", batch_count=count)

        job = await self._generate(request, "txt2img", make_events, count)
        return self._answer(job, body, settings, ignored)

    async def img2img(self, request: Request) -> dict:
        body = await json_body(request)
        if body.get("mask"):
            raise ApiError(422, "mask: inpainting is not offered here yet; send img2img without a mask")
        images = body.get("init_images")
        if not isinstance(images, list) or not images:
            raise ApiError(422, "init_images: give one image, base64 (with or without a data: prefix)")
        settings, ignored = self._common(body, "img2img")
        if settings["lora"]:
            raise ApiError(422, "prompt: a <lora:...> tag is taken by txt2img only; img2img runs without LoRAs")
        if len(images) > 1:
            ignored.append("init_images after the first")
        image = decode_image(images[0], "init_images")
        extra = resize_fields(body)
        request_kw = {k: v for k, v in settings["request"].items() if k not in ("lora", "lora_scale")}
        i2i = Img2ImgRequest(image=image, strength=body.get("denoising_strength", 0.75), **request_kw, **extra)
        count = settings["count"]
        if count > 1:
            ignored.append("batch_size and n_iter: img2img makes one image a request here")
            count = 1

        def make_events(cancel):
            return self.iter_img2img(i2i, cancel=cancel, history="streamed")

        job = await self._generate(request, "img2img", make_events, count)
        return self._answer(job, body, settings, ignored, img2img=True)

    def _common(self, body: dict, kind: str) -> tuple[dict, list[str]]:
        """What txt2img and img2img share: the engine request's fields, the runs, the model; and what is ignored."""
        ignored = sorted(k for k, v in body.items()
                         if k not in USED[kind] and v not in (None, False, 0, "", [], {}) and DEFAULTS.get(k) != v)
        prompt, lora, lora_scale = take_lora(body.get("prompt", ""))
        count = runs_of(body)
        model = self._model_of(body)
        request = dict(model=model, prompt=prompt, negative_prompt=_text(body, "negative_prompt"),
                       num_inference_steps=body.get("steps", 50), guidance_scale=body.get("cfg_scale", 7.0),
                       scheduler=sampler_of(body, self.sampler_names), seed=body.get("seed", -1), lora=lora,
                       lora_scale=lora_scale)
        if body.get("save_images") is False:
            ignored.append("save_images: every image is saved to the outputs dir, as the page's are")
        return {"request": request, "count": count, "model": model, "lora": lora}, ignored

    def _model_of(self, body: dict) -> str:
        override = body.get("override_settings") or {}
        if not isinstance(override, dict):
            raise ApiError(422, "override_settings: must be an object")
        model = override.get("sd_model_checkpoint") or self.model
        return self._checked_model(model)

    def _checked_model(self, model) -> str:
        if not isinstance(model, str):
            raise ApiError(422, f"sd_model_checkpoint: must be text; got {type(model).__name__}")
        model = re.sub(r"\s*\[[0-9a-f]{8,}\]$", "", model.strip())  # A1111's titles end with " [hash]"
        try:
            self.check_model(model, "txt2img")
        except ModelLoadError as exc:
            raise ApiError(404, f"Model not found: {exc}") from None
        return model

    def _answer(self, job: Job, body: dict, settings: dict, ignored: list[str], img2img: bool = False) -> dict:
        """A1111's answer: the PNGs as saved (their parameters chunk included), the request, the info string."""
        paths = [p for d in job.done for p in d.paths]
        images = [base64.b64encode(Path(p).read_bytes()).decode() for p in paths] \
            if body.get("send_images", True) else []
        infotexts = [png_parameters(p) for p in paths]
        first = job.done[0].info if job.done else {}
        seeds = [d.info.get("seed") for d in job.done]
        request = settings["request"]
        info = {
            "prompt": request["prompt"], "all_prompts": [request["prompt"]] * len(job.done),
            "negative_prompt": request["negative_prompt"],
            "all_negative_prompts": [request["negative_prompt"]] * len(job.done),
            "seed": first.get("seed", body.get("seed", -1)), "all_seeds": seeds,
            "subseed": -1, "all_subseeds": [-1] * len(job.done), "subseed_strength": 0,
            "width": first.get("width", body.get("width")), "height": first.get("height", body.get("height")),
            "sampler_name": request["scheduler"], "cfg_scale": request["guidance_scale"],
            "steps": request["num_inference_steps"], "batch_size": 1, "sd_model_name": settings["model"],
            "sd_model_hash": None, "denoising_strength": body.get("denoising_strength", 0.75) if img2img else None,
            "styles": [], "index_of_first_image": 0, "infotexts": infotexts,
            "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "extra_generation_params": (
                {"Lora": f"{settings['lora']}:{request['lora_scale']:g}"} if settings["lora"] else {}),
            "interrupted": job.interrupted, "skipped": job.skipped,
            "files": [self.shown(p) for p in paths], "ignored_by_workbench": ignored,
        }
        echoed = dict(body)
        if img2img and not body.get("include_init_images"):
            echoed["init_images"] = None  # as A1111 answers
        return {"images": images, "parameters": echoed, "info": json.dumps(info)}

    # -- progress, interrupt, skip ----------------------------------------------------------------------
    async def progress(self, request: Request) -> dict:
        job = self.current
        waiting = len(self.jobs) - (job is not None)
        if job is None:
            state = {"skipped": False, "interrupted": False, "stopping_generation": False,
                     "job": "", "job_count": 1 if waiting else 0, "job_timestamp": "0", "job_no": 0,
                     "sampling_step": 0, "sampling_steps": 0}
            return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None,
                    "textinfo": f"{waiting} waiting for the device" if waiting else None, "current_task": None}
        step = job.step
        done_runs = job.run_index
        fraction = (step.step / step.total) if step is not None else 0.0
        progress = min((done_runs + fraction) / max(job.count, 1), 1.0)
        elapsed = time.monotonic() - job.started if job.started else 0.0
        eta = elapsed / progress - elapsed if progress > 0 else 0.0
        current = None
        if step is not None and step.preview_x0 is not None and request.query_params.get(
                "skip_current_image", "false").lower() not in ("true", "1"):
            current = await asyncio.to_thread(png_base64, step.preview_x0.array())
        state = {"skipped": job.skipped, "interrupted": job.interrupted, "stopping_generation": False,
                 "job": job.id, "job_count": job.count, "job_timestamp": "0", "job_no": job.run_index,
                 "sampling_step": step.step if step else 0, "sampling_steps": step.total if step else 0}
        return {"progress": progress, "eta_relative": eta, "state": state, "current_image": current,
                "textinfo": f"step {state['sampling_step']}/{state['sampling_steps']}" if step else "starting",
                "current_task": job.id}

    async def interrupt(self, request: Request) -> dict:
        """End the run that holds the device now (an API job's, or the page's: its Stop line says it stopped)."""
        return self._stop("interrupted")

    async def skip(self, request: Request) -> dict:
        """A1111 skips to the next image of a batch; a batch count here is one run of the device's queue, which
        one cancel ends, so skip ends it as interrupt does and says skipped."""
        return self._stop("skipped")

    def _stop(self, how: str) -> dict:
        job = self.current
        if job is not None:
            setattr(job, how, True)
            job.cancel.cancel()
        self.interrupt_device()
        return {}

    # -- listings and options -------------------------------------------------------------------------
    async def samplers(self, request: Request) -> list:
        return [{"name": name, "aliases": [], "options": {}} for name in self.sampler_names]

    async def schedulers(self, request: Request) -> list:
        return [{"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1,
                 "need_inner_model": False},
                {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0, "need_inner_model": False}]

    async def sd_models(self, request: Request) -> list:
        return [{"title": name, "model_name": Path(name).stem if name.endswith(".safetensors") else name,
                 "hash": None, "sha256": None, "filename": name, "config": None} for name in self.list_models()]

    async def loras(self, request: Request) -> list:
        return [{"name": name, "alias": name, "path": self.shown(f"models/loras/{name}.safetensors"),
                 "metadata": {}} for name in self.list_loras(self.model)]

    async def get_options(self, request: Request) -> dict:
        return {"sd_model_checkpoint": self.model, "sd_checkpoint_hash": None, "samples_format": "png"}

    async def set_options(self, request: Request) -> None:
        body = await json_body(request)
        if "sd_model_checkpoint" in body:
            self.model = self._checked_model(body["sd_model_checkpoint"])
        return None

    async def scripts(self, request: Request) -> dict:
        return {"txt2img": [], "img2img": []}

    async def png_info(self, request: Request) -> dict:
        body = await json_body(request)
        image = decode_image(body.get("image"), "image")
        text = {k: v for k, v in image.info.items() if isinstance(v, str)}
        return {"info": text.get("parameters", ""), "items": {k: v for k, v in text.items() if k != "parameters"},
                "parameters": {}}

    async def refresh(self, request: Request) -> None:
        return None  # the listings read the models dir on each call


def build(**facade) -> A1111Api:
    """The API (``facade``: :class:`A1111Api`'s keywords), its hidden queue event registered in the current
    ``gr.Blocks``; its ``routes`` go to the app."""
    api = A1111Api(**facade)
    api.register()
    return api


# -- request fields ---------------------------------------------------------------------------------------
async def json_body(request: Request) -> dict:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(422, "body: must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(422, f"body: must be a JSON object; got {type(body).__name__}")
    return body


def _text(body: dict, name: str) -> str:
    value = body.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ApiError(422, f"{name}: must be text; got {type(value).__name__}")
    return value


def _opt(body: dict, name: str):
    """A size: absent or null = the model's own."""
    return body.get(name) or None


def take_lora(prompt) -> tuple[str, str, float]:
    """(the prompt without its ``<lora:name:scale>`` tag, the LoRA's name, its scale); one LoRA at most."""
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise ApiError(422, f"prompt: must be text; got {type(prompt).__name__}")
    tags = LORA_TAG.findall(prompt)
    if not tags:
        return prompt, "", 1.0
    if len(tags) > 1:
        found = ", ".join(m.group(0) for m in LORA_TAG.finditer(prompt))
        raise ApiError(422, f"prompt: one LoRA at a time here; got {len(tags)}: {found}")
    name, scale = tags[0]
    try:
        value = float(scale) if scale.strip() else 1.0
    except ValueError:
        raise ApiError(422, f"prompt: the LoRA's weight must be a number, as in <lora:{name}:0.7>; "
                            f"got {scale!r}") from None
    return LORA_TAG.sub("", prompt).strip(), name.strip(), value


def sampler_of(body: dict, ours: tuple[str, ...]) -> str:
    """Our sampler's name (one of ``ours``) from A1111's ``sampler_name`` (or the older ``sampler_index``) and
    ``scheduler``."""
    name = body.get("sampler_name") or body.get("sampler_index") or DEFAULT_SAMPLER
    if not isinstance(name, str) or name not in ours:
        raise ApiError(404, f"Sampler not found: {name!r}; samplers here: {', '.join(ours)}")
    scheduler = body.get("scheduler") or "automatic"
    key = scheduler.lower() if isinstance(scheduler, str) else scheduler
    if key not in SCHEDULERS:
        raise ApiError(422, f"scheduler: {scheduler!r} is not offered; give one of: Automatic, Karras")
    if not SCHEDULERS[key] or name.endswith(SCHEDULERS[key]):
        return name
    if name + SCHEDULERS[key] not in ours:
        with_karras = [s[:-len(" Karras")] for s in ours if s.endswith(" Karras")]
        raise ApiError(422, f"scheduler: Karras is offered with {', '.join(with_karras)} only; got it with {name!r}")
    return name + SCHEDULERS[key]


def runs_of(body: dict) -> int:
    """A1111's batch_size x n_iter images: our batch count (one image a run, seeds s, s+1, ...)."""
    size, n_iter = body.get("batch_size", 1), body.get("n_iter", 1)
    for name, value in (("batch_size", size), ("n_iter", n_iter)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ApiError(422, f"{name}: must be a whole number of at least 1; got {value!r}")
    return size * n_iter


def resize_fields(body: dict) -> dict:
    """img2img's ``resize_mode`` (0, 1, 2: A1111's names in ``RESIZE_MODES``) and size, as the engine's request takes
    them (a size left out is the image's aspect at about the model's pixel count)."""
    mode = body.get("resize_mode", 0)
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode < len(RESIZE_MODES):
        raise ApiError(422, f"resize_mode: must be 0 ({RESIZE_MODES[0]}), 1 ({RESIZE_MODES[1]}) or 2 "
                            f"({RESIZE_MODES[2]}); got {mode!r}")
    wanted = {"resize_mode": RESIZE_MODES[mode], "width": _opt(body, "width"), "height": _opt(body, "height")}
    return {k: v for k, v in wanted.items() if v is not None}


def decode_image(value, name: str) -> Image.Image:
    """A base64 image (with or without a ``data:...;base64,`` prefix) as an RGB PIL image."""
    if not isinstance(value, str) or not value:
        raise ApiError(422, f"{name}: must be a base64 image")
    if value.startswith("data:"):
        value = value.split(",", 1)[-1]
    try:
        with Image.open(io.BytesIO(base64.b64decode(value, validate=False))) as im:
            im.load()
            return im.copy() if name == "image" else im.convert("RGB")
    except (binascii.Error, OSError, ValueError):
        raise ApiError(422, f"{name}: not a readable base64 image (PNG, JPEG, WebP, ...)") from None


def png_parameters(path: str) -> str:
    with Image.open(path) as im:
        return im.info.get("parameters", "")


def png_base64(array) -> str:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()
