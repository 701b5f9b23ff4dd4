"""The facade's policy over what runs leave behind, for one outputs dir and one model registry: History's
images, what PNG Info may use of a PNG here, "Export run", and Replay's checks (the model, its LoRA and, for
img2img, the image it started from: here and the run's own) before the run goes on the device's queue again.
``Workbench`` delegates to it in one line a method."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image

from engine.cancel import CancelToken
from engine.errors import InputError, ModelLoadError, WorkbenchError
from engine.events import Done, Started, Step
from engine.models.identity import file_sha256, identity_changes
from engine.records.history import ImageHistory, check_image_path
from engine.records.pnginfo import PngInfo, png_info
from engine.records.replay import MODEL_KIND, ReplayReport, RunBundle, cannot, export_bundle, read_bundle, verdict
from engine.records.runs import INITS, find_init
from engine.sampling.unconditional import UNCONDITIONAL_SCHEDULERS


class Records:
    """``run(kind, request, cancel, history)``: a run's events on the device's queue (the facade's own runs);
    ``default_model(kind)``: the model an empty model string means."""

    def __init__(self, outputs_dir: str | Path, registry, run: Callable[..., Iterator],
                 default_model: Callable[[str], str]):
        self.history = ImageHistory(outputs_dir)  # the outputs dir's images, for History
        self.registry = registry
        self.run = run
        self.default_model = default_model

    def read_png_info(self, image: str | Path) -> PngInfo:
        """What a PNG (ours, A1111/Forge's, ComfyUI's) says about how it was made, in this workbench's terms:
        a model that is not here is moved to what cannot be used, as are settings the image's tab refuses."""
        info = png_info(image, verify=True)
        settings, unused = dict(info.settings), list(info.unused)
        # 1. The model: its name, else A1111's name with .safetensors, where that is a model here.
        model = settings.pop("model", None)
        if model:
            found = next((m for m in (model, f"{model}.safetensors") if self.model_here(m, info.kind)), None)
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
        if info.kind == "unconditional" and settings.get("scheduler") not in (None, *UNCONDITIONAL_SCHEDULERS):
            unused.append(f"scheduler {settings.pop('scheduler')} is not offered for unconditional models")
        return replace(info, settings=settings, unused=tuple(unused))

    def model_here(self, model: str, kind: str) -> bool:
        try:
            self.registry.check_available(model, kind)
        except ModelLoadError:
            return False
        return True

    def export_run(self, image: str | Path) -> dict:
        """The replay bundle of a saved image (a path under the outputs dir, relative to it or not): its run's
        record and the image's path, as "Export run" writes it to a file."""
        path = self.outputs_path(image)
        record = self.history.info(path).record
        if record is not None and "batch_count" in record and "images_sha256" not in record:
            raise InputError(f"{path} is the grid of a batch count's runs, not one run; export one of its images",
                             field="image")
        if record is None:
            raise InputError(f"{path} has no run record (saved before runs were recorded, or not by this workbench);"
                             " PNG Info shows its settings", field="image")
        return export_bundle(record, path)

    def outputs_path(self, image: str | Path) -> str:
        """``image`` as History names it (relative to the outputs dir), checked to be an image there. Taken as
        History names it, as the page shows a saved file (``outputs/txt2img/...``), or as a loop returned it."""
        text = check_image_path(str(image or ""))
        path, outputs = Path(text), self.history.outputs_dir
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
        self.history.resolve(text)
        return text

    def iter_replay(self, run_file: str | Path, *,
                    cancel: CancelToken | None = None) -> Iterator[Started | Step | Done | ReplayReport]:
        """Replay the run in ``run_file`` (a bundle "Export run" wrote, or a PNG this workbench saved): its events,
        then a :class:`ReplayReport` saying whether the images came out identical (see
        :mod:`engine.records.replay`). A model that is missing or changed ends it before anything runs."""
        # 1. The bundle, checked: ours, a format this version reads, a model name inside the models dir.
        bundle = read_bundle(run_file)
        # 2. What the run needs, each here and the run's own: the model, its LoRA, the image it started from.
        request, refused = self.request_of(bundle)
        if refused:
            yield cannot(refused)
            return
        # 3. The run again, on the device's queue like any other, then the verdict.
        done = None
        for event in self.run(bundle.kind, request, cancel, "streamed"):
            if isinstance(event, Done):
                done = event
            yield event
        yield verdict(bundle, done.record, done.images, done.paths, bundle.original or self.original(bundle))

    def request_of(self, bundle: RunBundle) -> tuple[object, str]:
        """(the bundle's request, ready to run, ""), or (None, why it cannot be replayed here): its model (or
        LoRA) not here or not the run's bytes, or an img2img run's starting image not in the outputs dir."""
        model = bundle.request.model
        try:
            current = self.registry.identity(self.registry.check_available(model, MODEL_KIND[bundle.kind]))
        except ModelLoadError as exc:
            return None, f"the model {model!r} is not here ({exc})"
        changes = identity_changes(bundle.record["model"], current)
        if changes:
            return None, f"the model {model!r} here is not the run's: {'; '.join(changes)}"
        lora = bundle.record.get("lora") or {}
        if lora:  # the LoRA too: here, fitting the model, and the same bytes
            try:
                path = self.registry.lora_file(model, lora.get("name", ""))
            except WorkbenchError as exc:
                return None, f"the LoRA {lora.get('name')!r} is not here ({exc})"
            if path is None or file_sha256(path) != lora.get("sha256"):
                return None, f"the LoRA {lora.get('name')!r} here is not the run's: its file hashes otherwise"
        if "init_sha256" not in bundle.record:
            return bundle.request, ""
        init = find_init(self.history.outputs_dir, bundle.record["init_sha256"])  # img2img: the image it began with
        if init is None:
            return None, (f"the image the run started from (sha256 {bundle.record['init_sha256'][:12]}…) is not in "
                          f"this outputs dir, where each img2img run keeps it ({INITS}/)")
        return replace(bundle.request, image=init), ""

    def original(self, bundle) -> Image.Image | None:
        """The run's own image from the outputs dir, where the bundle names one that is still there."""
        try:
            path = self.history.resolve(bundle.image or "")
            with Image.open(path) as im:
                return im.copy()
        except (WorkbenchError, OSError):
            return None
