"""Train the silo-tiny prior: stage ``vae`` (f4 autoencoder on pixel crops), then stage ``unet``
(v-prediction denoiser on latents of the frozen VAE).

Built for runs that last many CPU hours, interrupted and resumed: accelerate (same code on CPU or GPU), EMA
weights, warm-up + cosine LR, atomic checkpoints that resume model, EMA, optimizer, LR schedule,
step and every RNG, held-out evaluation logged to JSONL and TensorBoard, and an export to the
diffusers folder layout (``vae/``, ``unet/``, ``scheduler/``, ``silo_prior.json``).
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from silo.data.crops import CropSampler
from silo.errors import SiloError
from silo.priors import tiny
from silo.training.ema import EMA

STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.pt"


@dataclass
class TrainConfig:
    """A run's settings. A field the command line sets is the ``silo train-prior`` option of that name, except
    ``output`` (``--output-dir``), ``crop`` (``--crop-size``), ``eval_every`` (``--validation-every``), ``model``
    (``--prior-config``) and ``progress`` (``--no-progress``). Runs save them by these names (config.json and
    every checkpoint) and resume and export read them back by name: keep the names."""

    stage: str
    data: str
    output: str
    vae: str | None = None  # exported VAE folder (stage unet)
    max_steps: int = 20000
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 100
    min_lr_ratio: float = 0.05
    crop: int = 64  # pixels; the UNet sees crop // 4 latents
    seed: int = 0
    threads: int = 2
    ema_decay: float = 0.999
    kl_weight: float = 0.0  # the posterior is deterministic (tiny.make_deterministic); KL only if > 0
    checkpoint_every: int = 250
    eval_every: int = 250
    keep_checkpoints: int = 2
    eval_crops: int = 100
    stop_at: int | None = None  # end this run early (the LR horizon stays max_steps); resume later
    time_limit: float | None = None  # seconds: checkpoint and stop once exceeded (a lease on a borrowed GPU)
    init_from: str | None = None  # an exported prior folder: fine-tune its weights instead of starting fresh
    freeze_encoder: bool = False  # stage vae + init_from: train the decoder only, so the latent space (and
    # every UNet and operator trained on it) stays valid
    loss: str = "l1"  # stage vae: "l1" (robust from scratch) or "mse" (what PSNR measures; for fine-tuning)
    model: dict[str, Any] = field(default_factory=dict)  # overrides for tiny.vae_config / unet_config
    progress: bool = True


# -- checkpoints ------------------------------------------------------------------------------
def checkpoint_dir(output: str | Path) -> Path:
    return Path(output) / "checkpoints"


def latest_checkpoint(output: str | Path) -> Path | None:
    """The newest complete checkpoint (named in ``checkpoints/latest``), or None."""
    root = checkpoint_dir(output)
    pointer = root / "latest"
    if pointer.is_file():
        path = root / pointer.read_text().strip()
        if (path / STATE_FILE).is_file():
            return path
    done = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file()) if root.is_dir() else []
    return done[-1] if done else None


def resolve_resume(output: str | Path, resume: str | None) -> Path | None:
    if not resume:
        return None
    if resume == "latest":
        return latest_checkpoint(output)  # none yet: start from scratch (idempotent reruns)
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise SiloError(f"no checkpoint at {path} (expected {STATE_FILE} inside)")
    return path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- LR schedule ------------------------------------------------------------------------------
def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Linear warm-up, then cosine decay to ``min_ratio`` of the peak at ``total`` steps."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


# -- metrics ----------------------------------------------------------------------------------
def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of [-1, 1] images, on the [0, 1] scale."""
    mse = ((x.clamp(-1, 1) - y) / 2).square().flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


def ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    from skimage.metrics import structural_similarity

    a = ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    b = ((y + 1) / 2).permute(0, 2, 3, 1).numpy()
    return float(np.mean([structural_similarity(p, q, channel_axis=2, data_range=1.0) for p, q in zip(a, b)]))


def to_tensor(crops: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# -- stages -----------------------------------------------------------------------------------
RECONSTRUCTION_LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss}


class VaeStage:
    """f4 AutoencoderKL on random pixel crops; L1 (or MSE) loss; evaluated by held-out PSNR/SSIM."""

    name = "vae"

    def __init__(self, cfg: TrainConfig, images: list[np.ndarray], eval_crops: np.ndarray) -> None:
        if cfg.loss not in RECONSTRUCTION_LOSSES:
            raise SiloError(f"unknown VAE loss {cfg.loss!r}: choose one of {sorted(RECONSTRUCTION_LOSSES)}")
        self.cfg = cfg
        self.model = tiny.build_vae(**cfg.model)
        self.sampler = CropSampler(images, cfg.crop, seed=cfg.seed)
        self.eval_x = to_tensor(eval_crops)

    def loss(self, model, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.freeze_encoder):
            posterior = model.encode(batch).latent_dist
        recon = model.decode(posterior.mode()).sample
        rec = RECONSTRUCTION_LOSSES[self.cfg.loss](recon, batch)
        if self.cfg.kl_weight <= 0:
            return rec, {self.cfg.loss: rec.item()}
        kl = posterior.kl().mean() / batch[0].numel()
        return rec + self.cfg.kl_weight * kl, {self.cfg.loss: rec.item(), "kl": kl.item()}

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        outs = [model.decode(model.encode(x).latent_dist.mode()).sample for x in self.eval_x.split(25)]
        recon = torch.cat(outs)
        return {"psnr": float(psnr(recon, self.eval_x).mean()), "ssim": ssim(recon, self.eval_x)}


class UnetStage:
    """Unconditional UNet2DModel on latents of the frozen VAE; v-prediction, cosine schedule."""

    name = "unet"

    def __init__(self, cfg: TrainConfig, images: list[np.ndarray], eval_crops: np.ndarray) -> None:
        from diffusers import AutoencoderKL

        if not cfg.vae or not Path(cfg.vae).is_dir():
            raise SiloError("stage unet needs --vae DIR: an exported VAE folder (run stage vae with --export first)")
        self.cfg = cfg
        vae = AutoencoderKL.from_pretrained(cfg.vae, torch_dtype=torch.float32).eval().requires_grad_(False)
        self.scale = float(vae.config.scaling_factor)
        latents = cached_latents(vae, images, Path(cfg.output), cfg.vae)
        channels = latents[0].shape[0]
        self.model = tiny.build_unet(latent_channels=channels, sample_size=cfg.crop // 4, **cfg.model)
        self.scheduler = tiny.build_scheduler()
        self.sampler = CropSampler(latents, cfg.crop // 4, seed=cfg.seed)
        with torch.no_grad():
            x = to_tensor(eval_crops)
            self.eval_z = torch.cat([vae.encode(b).latent_dist.mode() for b in x.split(25)]) * self.scale
        g = torch.Generator().manual_seed(1234)
        self.eval_t = torch.randint(0, 1000, (len(self.eval_z),), generator=g)
        self.eval_noise = torch.randn(self.eval_z.shape, generator=g)

    def _loss(self, model, z0, noise, t) -> torch.Tensor:
        zt = self.scheduler.add_noise(z0, noise, t)
        target = self.scheduler.get_velocity(z0, noise, t)
        return F.mse_loss(model(zt, t).sample, target)

    def loss(self, model, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        noise = torch.randn_like(batch)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(batch),), device=batch.device)
        loss = self._loss(model, batch, noise, t)
        return loss, {"mse": loss.item()}

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        losses = [
            self._loss(model, z, n, t) * len(z)
            for z, n, t in zip(self.eval_z.split(25), self.eval_noise.split(25), self.eval_t.split(25))
        ]
        return {"heldout_loss": float(sum(losses) / len(self.eval_z))}


def encode_tiled(vae, image: np.ndarray, tile: int = 256, margin: int = 32) -> torch.Tensor:
    """Mean latent of a whole image, encoded in overlapping tiles to bound memory (exact away from
    tile borders because the encoder's receptive field is smaller than the margin)."""
    h, w = (image.shape[0] // 4) * 4, (image.shape[1] // 4) * 4
    x = torch.from_numpy(np.ascontiguousarray(image[:h, :w])).permute(2, 0, 1)[None].float().div(127.5).sub(1)
    out = None
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(h, y0 + tile), min(w, x0 + tile)
            py0, px0 = max(0, y0 - margin), max(0, x0 - margin)
            py1, px1 = min(h, y1 + margin), min(w, x1 + margin)
            z = vae.encode(x[:, :, py0:py1, px0:px1]).latent_dist.mode()[0]
            if out is None:
                out = torch.empty(z.shape[0], h // 4, w // 4)
            oy, ox = (y0 - py0) // 4, (x0 - px0) // 4
            out[:, y0 // 4 : y1 // 4, x0 // 4 : x1 // 4] = z[:, oy : oy + (y1 - y0) // 4, ox : ox + (x1 - x0) // 4]
    return out


def cached_latents(vae, images: list[np.ndarray], output: Path, vae_dir: str) -> list[torch.Tensor]:
    """Scaled latents of every training image and its mirror, cached (fp16) beside the run."""
    from tqdm.auto import tqdm

    from silo.data.photos import sha256_file

    weights = sorted(Path(vae_dir).glob("*.safetensors"))
    key = sha256_file(weights[0])[:16] if weights else "none"  # re-encode only when the VAE changes
    path = output / f"latents-{key}.pt"
    if path.is_file():  # kept in fp16 in memory too; crops are converted to fp32 as they are drawn
        return torch.load(path, weights_only=True)
    scale = float(vae.config.scaling_factor)
    latents = []
    with torch.no_grad():
        for im in tqdm(images, desc="encode latents", unit="image"):
            for view in (im, im[:, ::-1]):
                latents.append((encode_tiled(vae, view) * scale).half())
    output.mkdir(parents=True, exist_ok=True)
    torch.save(latents, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)
    return latents


# -- the loop ---------------------------------------------------------------------------------
def train(
    cfg: TrainConfig,
    resume: str | None = None,
    images: list[np.ndarray] | None = None,
    eval_crops: np.ndarray | None = None,
) -> dict[str, Any]:
    """Train ``cfg.stage`` up to ``cfg.max_steps``; returns the last logged record."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from silo.data import photos

    torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    lock = _lock(out)  # noqa: F841 (held until this function returns)
    if images is None:
        images = photos.load_training_images(cfg.data)
    if eval_crops is None:
        eval_crops = photos.heldout_crops(cfg.eval_crops, 64 if cfg.stage == "vae" else cfg.crop, seed=0)
    if cfg.freeze_encoder and (cfg.stage != "vae" or not cfg.init_from):
        raise SiloError("--freeze-encoder fine-tunes a trained VAE's decoder: it needs --stage vae and --init-from")
    stage = {"vae": VaeStage, "unet": UnetStage}[cfg.stage](cfg, images, eval_crops)
    model = stage.model
    ckpt = resolve_resume(out, resume)
    if cfg.init_from and ckpt is None:  # a resumed run takes its weights from the checkpoint
        init_weights(model, cfg.init_from, cfg.stage)
    if cfg.freeze_encoder:
        model.encoder.requires_grad_(False)
        model.quant_conv.requires_grad_(False)
    eval_model = copy.deepcopy(model).eval().requires_grad_(False)  # evaluation runs on the CPU
    accelerator = Accelerator()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup, cfg.max_steps, cfg.min_lr_ratio))
    model, optimizer, schedule = accelerator.prepare(model, optimizer, schedule)
    ema = EMA(accelerator.unwrap_model(model), cfg.ema_decay)
    step = 0
    if ckpt is not None:
        step = load_checkpoint(ckpt, accelerator, ema, stage.sampler)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1) + "\n")
    writer = _tensorboard(out / "tensorboard")
    record: dict[str, Any] = {}
    bar = tqdm(total=cfg.max_steps, initial=step, desc=f"train {cfg.stage}", unit="step", disable=not cfg.progress)
    running, t0, steps_timed = {}, time.time(), 0
    end = min(cfg.max_steps, cfg.stop_at or cfg.max_steps)
    started = time.time()
    while step < end:
        model.train()
        batch = stage.sampler.sample(cfg.batch_size).to(accelerator.device)
        loss, parts = stage.loss(model, batch)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(accelerator.unwrap_model(model))
        step += 1
        steps_timed += 1
        for k, v in {"loss": loss.item(), **parts}.items():
            running[k] = running.get(k, 0.0) + v
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if cfg.time_limit is not None and time.time() - started > cfg.time_limit and step < end:
            bar.write(f"time limit of {cfg.time_limit:g} s reached at step {step}: checkpointing and stopping")
            end = step
        last = step == end
        if step % cfg.eval_every == 0 or last:
            ema.copy_to(eval_model)
            record = {
                "step": step,
                "stage": cfg.stage,
                "lr": schedule.get_last_lr()[0],
                "s_per_step": (time.time() - t0) / max(1, steps_timed),
                **{f"train_{k}": v / max(1, steps_timed) for k, v in running.items()},
                **{f"eval_{k}": v for k, v in stage.evaluate(eval_model).items()},
                "time": time.time(),
            }
            _log(out, writer, record)
            bar.write(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}))
            running, t0, steps_timed = {}, time.time(), 0
        if step % cfg.checkpoint_every == 0 or last:
            save_checkpoint(out, step, accelerator, ema, stage.sampler, cfg)
    bar.close()
    if writer is not None:
        writer.close()
    return record


def init_weights(model: torch.nn.Module, prior_dir: str | Path, stage: str) -> None:
    """Load the ``stage`` weights of an exported prior into ``model`` (same architecture required)."""
    from safetensors.torch import load_file

    path = Path(prior_dir) / stage / "diffusion_pytorch_model.safetensors"  # what export writes
    if not path.is_file():
        raise SiloError(f"--init-from {prior_dir}: no {stage}/{path.name} there (an exported prior folder?)")
    weights = load_file(path)
    own = model.state_dict()
    wrong = sorted(k for k in own if k not in weights or weights[k].shape != own[k].shape)
    if wrong or set(weights) - set(own):
        raise SiloError(
            f"--init-from {prior_dir}: its {stage} does not match this model config "
            f"(e.g. {(wrong or sorted(set(weights) - set(own)))[0]})"
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()})


def _lock(out: Path):
    """One training process per run folder: a second one would interleave checkpoints."""
    import fcntl

    handle = open(out / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise SiloError(f"another training process is using {out} (lock {out / '.lock'})") from None
    return handle


def save_checkpoint(out: Path, step: int, accelerator, ema: EMA, sampler: CropSampler, cfg: TrainConfig) -> Path:
    """Write ``checkpoints/step-N`` atomically (temp folder + rename), point ``latest`` at it, prune."""
    root = checkpoint_dir(out)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.save_state(str(tmp), safe_serialization=True)
    torch.save(ema.state_dict(), tmp / EMA_FILE)
    model = accelerator.unwrap_model(accelerator._models[0])
    # the resolved diffusers config: export rebuilds exactly this architecture even if defaults change
    model_config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    state = {"step": step, "sampler": sampler.state_dict(), "config": asdict(cfg), "model_config": model_config}
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _atomic_write(root / "latest", final.name + "\n")
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in done[: -cfg.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, accelerator, ema: EMA, sampler: CropSampler) -> int:
    accelerator.load_state(str(path))
    ema.load_state_dict(torch.load(path / EMA_FILE, weights_only=True))
    state = json.loads((path / STATE_FILE).read_text())
    sampler.load_state_dict(state["sampler"])
    return int(state["step"])


def _tensorboard(path: Path):
    from silo.training.tracking import tensorboard_installed

    if not tensorboard_installed("log.jsonl"):  # optional: the JSON lines log is always written
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(path))


def _log(out: Path, writer, record: dict[str, Any]) -> None:
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    if writer is not None:
        for k, v in record.items():
            if isinstance(v, float) and k != "time":
                writer.add_scalar(f"{record['stage']}/{k}", v, record["step"])
        writer.flush()
