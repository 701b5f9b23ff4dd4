"""Model folders as people bring them: the hub's layout (pickles beside safetensors, fp16 variants, components
no loop uses), pickle-only folders, and booby-trapped pickles that write a file if ever fully unpickled."""

import json
from pathlib import Path

import torch


class _Trap:
    """Unpickled in full (``torch.load(weights_only=False)``), it writes ``marker``; the weights-only loader refuses it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('the pickle ran')",)


def booby_trap(path: Path, marker: Path) -> Path:
    """A torch checkpoint at ``path`` holding a tensor and a payload that writes ``marker`` when fully unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": torch.zeros(2), "payload": _Trap(marker)}, path)
    return path


def hub_layout_sd(folder: Path, marker: Path) -> Path:
    """A tiny SD folder laid out as the SD 1.5 repo is: safetensors (seed 0), fp16 variants of other weights (seed
    1), a non-EMA UNet (seed 2), booby-trapped ``.bin`` files beside each model's safetensors, a booby-trapped
    ``.ckpt`` at the root, and
    ``safety_checker`` / ``feature_extractor`` in model_index.json (the checker's weights a trap, the extractor's
    folder not downloaded)."""
    from engine.testing.tiny import tiny_sd_pipeline

    tiny_sd_pipeline(0).save_pretrained(folder)
    tiny_sd_pipeline(1).to(torch.float16).save_pretrained(folder, variant="fp16")
    for name in ("unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.non_ema.bin",
                 "vae/diffusion_pytorch_model.bin", "text_encoder/pytorch_model.bin", "safety_checker/pytorch_model.bin",
                 "v1-5-pruned-emaonly.ckpt"):
        booby_trap(folder / name, marker)
    from safetensors.torch import save_file  # SD 1.5's non-EMA UNet beside the EMA one: other weights (seed 2)

    save_file(tiny_sd_pipeline(2).unet.state_dict(), folder / "unet" / "diffusion_pytorch_model.non_ema.safetensors")
    (folder / "safety_checker" / "config.json").write_text("{}")
    index = json.loads((folder / "model_index.json").read_text())
    index.update(safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
                 feature_extractor=["transformers", "CLIPImageProcessor"], requires_safety_checker=True)
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder
