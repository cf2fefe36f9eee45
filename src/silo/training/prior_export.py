"""Export a silo-tiny training run to the diffusers folder layout that :class:`silo.priors.Prior` loads.

The VAE's ``scaling_factor`` is set from the measured latent RMS so scaled latents have about unit
variance (what the diffusion schedule assumes). Weights are EMA weights, stored as fp16 when that
costs less than ``FP16_MAX_DB_LOSS`` of held-out PSNR (VAE) and always for the UNet (its output is
re-noised every step, so fp16 rounding is far below the sampling noise).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

from silo.data.crops import CropSampler
from silo.errors import SiloError
from silo.priors import tiny
from silo.training.prior import (
    EMA_FILE,
    STATE_FILE,
    TrainConfig,
    latest_checkpoint,
    psnr,
    ssim,
    to_tensor,
)

FP16_MAX_DB_LOSS = 0.05


def _ema_model(cfg: TrainConfig, build) -> tuple[torch.nn.Module, dict]:
    ckpt = latest_checkpoint(cfg.output)
    if ckpt is None:
        raise SiloError(f"no checkpoint in {cfg.output}/checkpoints to export")
    state = json.loads((ckpt / STATE_FILE).read_text())
    model = build(state["config"])
    if "model_config" in state:  # the exact trained architecture, immune to changed defaults
        model = type(model).from_config(state["model_config"])
    shadow = torch.load(ckpt / EMA_FILE, weights_only=True)["shadow"]
    missing = set(model.state_dict()) - set(shadow)
    if missing:
        raise SiloError(f"{ckpt}: EMA weights do not match the model config (missing {sorted(missing)[:3]})")
    model.load_state_dict(shadow, strict=False)
    return model.eval().requires_grad_(False), state


def _half(model: torch.nn.Module) -> torch.nn.Module:
    """Store parameters as fp16 (diffusers loads them back into fp32 unless told otherwise)."""
    for p in model.parameters():
        p.data = p.data.half()
    return model


def latent_rms(vae, images: list[np.ndarray], n: int = 256, size: int = 128, seed: int = 0) -> float:
    """RMS of the VAE's mean latents over ``n`` seeded training crops."""
    size = min(size, max(min(im.shape[:2]) for im in images) // 4 * 4)
    crops = CropSampler(images, size, seed=seed).sample(n)
    with torch.no_grad():
        z = torch.cat([vae.encode(b).latent_dist.mode() for b in crops.split(32)])
    return float(z.square().mean().sqrt())


def _vae_quality(vae, x: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        recon = torch.cat([vae.decode(vae.encode(b).latent_dist.mode()).sample for b in x.split(25)])
    return {"psnr": float(psnr(recon, x).mean()), "ssim": ssim(recon, x)}


def export_vae(cfg: TrainConfig, folder: Path) -> Path:
    from silo.data import photos

    vae, state = _ema_model(cfg, lambda c: tiny.build_vae(**c.get("model", {})))
    trained = state["config"]
    if trained.get("freeze_encoder"):  # the same encoder: keep its scale exactly (the UNet and operators assume it)
        scale = float(json.loads((Path(trained["init_from"]) / "vae" / "config.json").read_text())["scaling_factor"])
    else:
        scale = 1.0 / latent_rms(vae, photos.load_training_images(cfg.data))
    vae.register_to_config(scaling_factor=round(scale, 5))
    x = to_tensor(photos.heldout_crops(100, 64, seed=0))
    fp32 = _vae_quality(vae, x)
    half = copy.deepcopy(vae)
    for p in half.parameters():
        p.data = p.data.half().float()
    fp16 = _vae_quality(half, x)
    use_half = fp32["psnr"] - fp16["psnr"] < FP16_MAX_DB_LOSS
    (_half(vae) if use_half else vae).save_pretrained(folder / "vae", safe_serialization=True)
    tiny.write_card(
        folder,
        vae={
            "parameters": tiny.count_parameters(vae),
            "latent_channels": vae.config.latent_channels,
            "downsampling": 2 ** (len(vae.config.block_out_channels) - 1),
            "scaling_factor": round(scale, 5),
            "step": state["step"],
            "dtype": "float16" if use_half else "float32",
            "heldout_64px_crops": 100,
            "heldout_psnr": round((fp16 if use_half else fp32)["psnr"], 3),
            "heldout_ssim": round((fp16 if use_half else fp32)["ssim"], 4),
            "heldout_psnr_fp32": round(fp32["psnr"], 3),
            **_finetune_history(state["config"], "vae"),
        },
    )
    return folder / "vae"


def export_unet(cfg: TrainConfig, folder: Path) -> Path:
    from diffusers import AutoencoderKL

    if not cfg.vae:
        raise SiloError("exporting the UNet needs --vae (the VAE it was trained with)")
    channels = int(AutoencoderKL.load_config(cfg.vae)["latent_channels"])
    unet, state = _ema_model(
        cfg, lambda c: tiny.build_unet(latent_channels=channels, sample_size=c["crop"] // 4, **c.get("model", {}))
    )
    _half(unet).save_pretrained(folder / "unet", safe_serialization=True)
    tiny.build_scheduler().save_pretrained(folder / "scheduler")
    vae_dir = Path(cfg.vae).resolve()
    if vae_dir != (folder / "vae").resolve():
        AutoencoderKL.from_pretrained(vae_dir).save_pretrained(folder / "vae", safe_serialization=True)
    log = Path(cfg.output) / "log.jsonl"
    last = json.loads(log.read_text().splitlines()[-1]) if log.is_file() else {}
    trained = state["config"]
    card = {
        "parameters": tiny.count_parameters(unet),
        "step": state["step"],
        "dtype": "float16",
        "ema_decay": trained["ema_decay"],
        "train_crop_latents": trained["crop"] // 4,
        "batch_size": trained["batch_size"],
        "heldout_loss": last.get("eval_heldout_loss"),
    }
    card.update(_finetune_history(trained, "unet"))
    tiny.write_card(
        folder,
        unet=card,
        scheduler=tiny.scheduler_config(),
        note="load with torch_dtype=torch.float32 on CPU (weights are stored in fp16)",
    )
    return folder


def _finetune_history(trained: dict, stage: str) -> dict:
    """For a fine-tuned run: the card entry of the weights it started from (and what was frozen)."""
    if not trained.get("init_from"):
        return {}
    previous = Path(trained["init_from"]) / tiny.CARD_FILE
    history = {"finetuned_from": json.loads(previous.read_text()).get(stage) if previous.is_file() else None}
    if trained.get("freeze_encoder"):
        history["frozen"] = "encoder (the latent space is the one it started from)"
    return history


def export(cfg: TrainConfig, folder: str | Path) -> Path:
    """Write ``folder/vae`` (stage vae) or ``folder/unet`` + ``folder/scheduler`` (stage unet)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return export_vae(cfg, folder) if cfg.stage == "vae" else export_unet(cfg, folder)
