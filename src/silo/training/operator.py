"""Train a SILO latent operator ``H`` with ``H(E(x)) ~= E(A(x) + n)``, on one process or many.

``accelerate`` owns devices, processes, mixed precision and gradient accumulation, so one code path runs
on a laptop CPU, one GPU, several GPUs or several machines (``accelerate launch`` or ``torchrun``).
Every random draw of a training step is seeded by ``(seed, micro-batch, process)`` and the data order is
a pure function of the seed (see :mod:`silo.training.data`), so a run resumed from a checkpoint continues
exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from silo.degradations.base import Degradation
from silo.degradations.noise import to_model_scale
from silo.errors import SiloError
from silo.operators import OPERATOR_CLASSES, OperatorInputs, trainable_kinds
from silo.training import data as tdata
from silo.training.lock import TrainingLock

STATE_FILE = "silo_train_state.json"
CARD_FILE = "model_card.json"
#: identity keys added after checkpoints were first written, with the value an older checkpoint implies
ADDED_LATER = {"kernel_aware": False}
#: operator config keys added later, with the value an older checkpoint implies (for kinds that have the key)
ADDED_LATER_OPERATOR = {"blur_kernel_scale": 0}
#: settings that may change between a checkpoint and its resumption (all others must match)
RESUMABLE = {
    "max_steps",
    "validation_every",
    "checkpoint_every",
    "checkpoints_total_limit",
    "resume_from_checkpoint",
    "mixed_precision",
    "prior_dtype",
    "report_to",
    "num_workers",
    "show_progress",
    "output",
    "init_operator",
    "cpu",
    "setting_sources",
}
#: the defaults of the options a recipe can set, where no recipe applies (``silo train-operator --help``)
GENERIC_DEFAULTS: dict[str, Any] = dict(
    max_steps=20000,
    batch_size=16,
    crop_size=512,
    validation_every=500,
    checkpoint_every=1000,
    num_workers=2,
    operator_config={},
)
#: the recipe that trained the shipped silo-tiny operators (docs/silo-tiny.md), per kind: the defaults when the
#: prior is silo-tiny. Its 64 px crops and few hundred steps at a high learning rate fit the small prior on a CPU;
#: the residual CNN learns the identity part of a blur or down-scale for free.
SILO_TINY_RECIPE: dict[str, dict[str, Any]] = {
    "cnn": dict(
        crop_size=64,
        batch_size=8,
        max_steps=800,
        lr=1e-3,
        operator_config={"residual": True},
        checkpoint_every=100,
        validation_every=500,
        num_workers=0,
    ),
    "readout": dict(
        crop_size=64,
        batch_size=8,
        max_steps=200,
        lr=5e-4,
        operator_config={},
        checkpoint_every=100,
        validation_every=500,
        num_workers=0,
    ),
}
#: the recipe's steps for a kernel-aware CNN (the kernel changes per image: motion blur)
SILO_TINY_KERNEL_AWARE_STEPS = 1200
RECIPE_SOURCE = "silo-tiny recipe"


@dataclass
class TrainOperatorConfig:
    """A run's settings. Each field is the ``silo train-operator`` option of that name, except ``output``
    (``--output-dir``), ``kind`` (``--operator-kind``), ``init_operator`` (``--init-from``), ``cpu``
    (``--device cpu``) and ``show_progress`` (``--no-progress``). Checkpoints store the settings by these
    names and a resumed run compares them by name: keep the names."""

    prior: str
    output: str
    kind: str = "cnn"  # a trainable kind of silo.operators.OPERATOR_CLASSES
    task: str | None = None
    degradation: str | None = None  # module:callable
    noise_sigma_max: float | None = None  # [0, 1] scale; default: the kind's training_defaults
    data: str | None = None
    dataset: str | None = None
    split: str = "train"
    image_column: str | None = None
    validation_images: int | None = None
    max_steps: int | None = None  # None: the silo-tiny recipe with that prior, else GENERIC_DEFAULTS
    batch_size: int | None = None
    lr: float | None = None
    crop_size: int | None = None
    loss: str = "l1"
    clamp_target: bool = False
    validation_every: int | None = None
    checkpoint_every: int | None = None
    checkpoints_total_limit: int = 3
    resume_from_checkpoint: str | None = None
    mixed_precision: str = "no"
    prior_dtype: str = "auto"
    gradient_accumulation_steps: int = 1
    report_to: str = "auto"
    seed: int = 0
    num_workers: int | None = 0
    operator_config: dict[str, Any] | None = None
    init_operator: str | None = None
    kernel_aware: bool = False  # the operator also reads each image's blur kernel (kinds that can read one)
    show_progress: bool = True
    cpu: bool = False  # force CPU even where a GPU is available
    setting_sources: dict[str, str] = field(default_factory=dict)  # filled by resolve_defaults

    def resolve_defaults(self) -> TrainOperatorConfig:
        """Fill the options left None: from the silo-tiny recipe when the prior is silo-tiny (by name or folder),
        else from the kind's training defaults (lr, noise) and GENERIC_DEFAULTS; ``setting_sources`` says which."""
        from silo.models import is_shipped_prior

        if self.kind not in trainable_kinds():
            return self  # check() says so
        kind_defaults = OPERATOR_CLASSES[self.kind].training_defaults
        recipe = dict(SILO_TINY_RECIPE.get(self.kind, {})) if is_shipped_prior(self.prior) else {}
        if recipe and self.kernel_aware:
            recipe["max_steps"] = SILO_TINY_KERNEL_AWARE_STEPS
        generic = {**GENERIC_DEFAULTS, "lr": kind_defaults.lr}
        for name, fallback in generic.items():
            if name in self.setting_sources:
                continue
            if getattr(self, name) is not None:
                self.setting_sources[name] = "given"
            elif name in recipe:
                setattr(self, name, json.loads(json.dumps(recipe[name])))  # a copy of dicts
                self.setting_sources[name] = RECIPE_SOURCE
            else:
                setattr(self, name, json.loads(json.dumps(fallback)))
                self.setting_sources[name] = f"{self.kind} default" if name == "lr" else "default"
        if "noise_sigma_max" not in self.setting_sources:
            given = self.noise_sigma_max is not None
            self.setting_sources["noise_sigma_max"] = "given" if given else f"{self.kind} default"
        return self

    def check(self) -> None:
        """Cheap checks, before the prior, the data or any weights are loaded."""
        if self.kind not in trainable_kinds():
            raise SiloError(f"--operator-kind must be one of {', '.join(trainable_kinds())}, got {self.kind!r}")
        self.resolve_defaults()
        if (self.task is None) == (self.degradation is None):
            raise SiloError("give exactly one of --task NAME_OR_YAML or --degradation module:callable")
        if self.kernel_aware and "kernel" not in OPERATOR_CLASSES[self.kind].can_read:
            readers = [k for k in trainable_kinds() if "kernel" in OPERATOR_CLASSES[k].can_read]
            raise SiloError(
                f"--kernel-aware is for operator kinds that read a blur kernel "
                f"(--operator-kind {' or '.join(readers)}), not {self.kind}"
            )
        if self.loss not in ("l1", "l2"):
            raise SiloError(f"--loss must be l1 or l2, got {self.loss!r}")
        for name in (
            "max_steps",
            "batch_size",
            "crop_size",
            "validation_every",
            "checkpoint_every",
            "checkpoints_total_limit",
            "gradient_accumulation_steps",
        ):
            if getattr(self, name) < 1:
                raise SiloError(f"--{name.replace('_', '-')} must be >= 1")
        if self.num_workers < 0:
            raise SiloError("--num-workers must be >= 0")
        if self.noise_sigma_max is not None and not 0 <= self.noise_sigma_max <= 0.5:
            raise SiloError("--noise-sigma-max must be in [0, 0.5] (std on the [0, 1] image scale)")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise SiloError("--mixed-precision must be no, fp16 or bf16")
        if self.report_to not in ("auto", "tensorboard", "wandb", "none"):
            raise SiloError("--report-to must be tensorboard, wandb or none")


# -- the objective ---------------------------------------------------------------------------------
@dataclass
class Sample:
    """One batch ready for ``H``: the clean latent ``E(x)``, UNet features (for kinds that read them), the
    target, the mask (for operators with a mask channel), the blur kernel(s) and the noise level."""

    z: Tensor
    features: list[Tensor] | None
    target: Tensor
    mask: Tensor | None
    sigma: float
    measurement: Tensor  # A(x) + n brought to image size, for the validation grid
    kernel: Tensor | None = None  # the blur kernel(s); only kernel-aware operators read them

    def operator_inputs(self) -> OperatorInputs:
        """The batch as the one operator input structure; each kind reads what it needs of it."""
        return OperatorInputs(
            z0=self.z,
            features=self.features,
            noise_sigma=self.sigma,
            mask=self.mask,
            kernel=self.kernel,
            latent_size=tuple(self.z.shape[-2:]),
        )


class Objective:
    """Builds ``(H's inputs, E(A(x) + n))`` for a batch from per-image seeded draws, and the loss."""

    def __init__(
        self,
        prior,
        degradation: Degradation,
        kind: str,
        sigma_max: float,
        loss: str = "l1",
        clamp_target: bool = False,
        mask_channel: bool = False,
    ) -> None:
        self.prior, self.deg, self.kind = prior, degradation, kind
        self.sigma_max, self.loss_kind, self.clamp, self.mask_channel = sigma_max, loss, clamp_target, mask_channel
        self.draw_features = "features" in OPERATOR_CLASSES[kind].can_read  # a UNet pass per batch: only if read
        self._context: dict[int, Tensor | None] = {}

    def context(self, batch: int) -> Tensor | None:
        """Empty-prompt embeddings for text priors (the readout's features are taken unconditioned)."""
        if batch not in self._context:
            self._context[batch] = self.prior.encode_prompt("", batch).cond
        return self._context[batch]

    @torch.no_grad()
    def draw(self, x: Tensor, seed: int, sigma: float | None = None) -> Sample:
        """Everything random for this batch comes from ``seed``: degradation params, noise level and noise,
        encoder samples, and the readout's timesteps."""
        prior, deg, b = self.prior, self.deg, x.shape[0]
        device = prior.device
        rng = np.random.default_rng(seed)
        seeds = rng.integers(0, 2**62, size=(3, b)).tolist()  # params, target encoding, input encoding
        x = x.to(device, torch.float32)
        params = {k: v.to(device) for k, v in deg.sample_params(x.shape, seeds[0]).items()}
        y = deg.A(x, params).float()
        if not torch.isfinite(y).all():
            raise SiloError(f"degradation {getattr(deg, 'spec', deg.name)} returned NaN or Inf on a training batch")
        if sigma is None:
            sigma = float(rng.uniform(0.0, self.sigma_max))
        g = torch.Generator(device=device).manual_seed(int(rng.integers(0, 2**62)))
        y = y + to_model_scale(sigma) * torch.randn(y.shape, generator=g, device=device)
        y_full = deg.to_image_size(y)
        gens = lambda s: [torch.Generator().manual_seed(int(v)) for v in s]  # noqa: E731
        target = prior.encode(y_full, gens(seeds[1])).float()
        if self.clamp:
            target = target.clamp(-4, 4)
        z = prior.encode(x, gens(seeds[2])).float()
        mask = deg.mask(params) if self.mask_channel else None
        features = self._features(z, rng) if self.draw_features else None
        return Sample(z, features, target, mask, sigma, y_full, deg.blur_kernel(params))

    def _features(self, z: Tensor, rng: np.random.Generator) -> list[Tensor]:
        """``E(x)`` noised to a uniform timestep in [1, T-1]; the UNet's up-block ResNet outputs."""
        from silo.operators.features import UNetFeatureHooks

        sched, b = self.prior.scheduler, z.shape[0]
        t = torch.from_numpy(rng.integers(1, sched.config.num_train_timesteps, size=b)).to(self.prior.device)
        g = torch.Generator(device=z.device).manual_seed(int(rng.integers(0, 2**62)))
        noise = torch.randn(z.shape, generator=g, device=z.device)
        z_t = sched.add_noise(z, noise, t).to(self.prior.dtype)
        with UNetFeatureHooks(self.prior.unet) as hooks:
            self.prior.denoise(z_t, t, self.context(b))
            return [f.float() for f in hooks.features]

    def predict(self, model: torch.nn.Module, s: Sample) -> Tensor:
        """``H``'s output through the operator's ``apply``, as sampling calls it. The prior itself gives the
        noise-level embedding; ``model`` may be accelerate's (DDP) wrapper, which then runs ``forward``."""
        from accelerate.utils import extract_model_from_parallel

        return extract_model_from_parallel(model).apply(s.operator_inputs(), self.prior, call=model)

    def loss(self, pred: Tensor, target: Tensor, per_image: bool = False) -> Tensor:
        err = (pred.float() - target).abs() if self.loss_kind == "l1" else (pred.float() - target) ** 2
        return err.flatten(1).mean(1) if per_image else err.mean()


# -- building the operator -------------------------------------------------------------------------
FIXED_BY_PRIOR = {
    "latent_channels",
    "embedding_dim",
    "feature_channels",
    "mask_channel",
    "sigma_conditioned",
    "blur_kernel_scale",
}


def build_operator(
    kind: str,
    prior,
    crop: int,
    mask_channel: bool,
    overrides: dict[str, Any],
    init: str | None = None,
    kernel_aware: bool = False,
) -> torch.nn.Module:
    """A fresh operator of registered ``kind`` sized for this prior (or ``init``'s weights, refused if made for
    another prior or another kernel awareness or mask channel)."""
    from silo.operators import check_compatible, load_operator
    from silo.operators.features import feature_channels

    if kind not in OPERATOR_CLASSES:
        raise SiloError(f"unknown operator kind {kind!r} (known: {', '.join(OPERATOR_CLASSES)})")
    cls = OPERATOR_CLASSES[kind]
    if init is not None:
        op = load_operator(init)
        if getattr(op, "kind", None) != kind:
            raise SiloError(f"--init-from {init} is a {getattr(op, 'kind', type(op).__name__)} operator, not {kind}")
        features = feature_channels(prior.unet) if "features" in op.reads else None
        check_compatible(op, prior.latent_channels, prior.embedding_dim, features, prior.vae_scale)
        if ("kernel" in op.reads) != kernel_aware:
            raise SiloError(
                f"--init-from {init}: kernel-aware {'kernel' in op.reads}, "
                f"this run {'is' if kernel_aware else 'is not'} (--kernel-aware)"
            )
        if "mask" in cls.can_read and ("mask" in op.reads) != mask_channel:
            raise SiloError(f"--init-from {init}: mask channel {'mask' in op.reads}, this task needs {mask_channel}")
        return op.train().requires_grad_(True)
    allowed = set(cls.init_keys())
    bad = set(overrides) - (allowed - FIXED_BY_PRIOR)
    if bad:
        hint = " (blur_kernel_scale: use --kernel-aware)" if "blur_kernel_scale" in bad else ""
        raise SiloError(
            f"--operator-config: unknown or prior-fixed keys {sorted(bad)} for a {kind} operator "
            f"(allowed: {', '.join(sorted(allowed - FIXED_BY_PRIOR))}){hint}"
        )
    mask = mask_channel and "mask" in cls.can_read  # a task with per-image masks: kinds that can read one do
    try:
        return cls.for_prior(
            prior, norm_size=max(1, crop // prior.vae_scale), mask=mask, kernel=kernel_aware, **overrides
        ).train()
    except (TypeError, ValueError, RuntimeError) as err:
        raise SiloError(f"--operator-config {json.dumps(overrides)}: cannot build a {kind} operator: {err}") from None


def freeze_parameters(model: torch.nn.Module, patterns: tuple[str, ...]) -> None:
    """Leave the parameters whose names match an ``fnmatch`` pattern out of training."""
    from fnmatch import fnmatchcase

    for name, param in model.named_parameters():
        if any(fnmatchcase(name, pattern) for pattern in patterns):
            param.requires_grad_(False)


def operator_config(model: torch.nn.Module) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(model.config).items() if not k.startswith("_")}


# -- the training run ------------------------------------------------------------------------------
def derive_seed(*parts: int) -> int:
    """A well-mixed 62-bit seed from integers (seed, micro-batch, process, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 2)


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints (``step-N`` with a state file), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.name[5:].isdigit() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def read_state(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's ``silo_train_state.json``, or one line naming it when it is damaged."""
    path = checkpoint / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SiloError(f"checkpoint file {path} is damaged or truncated ({err})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise SiloError(f"checkpoint file {path} is damaged: no step")
    return state


def check_checkpoint(checkpoint: Path, others: list[Path]) -> None:
    """Read every file of a checkpoint before resuming from it, so that a truncated or damaged file (a full disk,
    a copy cut short) is one line naming it instead of a traceback from deep inside torch or safetensors."""
    step = int(checkpoint.name[5:]) if checkpoint.name[5:].isdigit() else None
    earlier = [p for p in others if step is not None and int(p.name[5:]) < step]
    hint = (
        f"resume from an earlier one with --resume-from-checkpoint {earlier[-1]}, or delete {checkpoint}"
        if earlier
        else f"delete {checkpoint} to start over"
    )

    def damaged(path: Path, why: str) -> SiloError:
        return SiloError(f"checkpoint file {path} is damaged or truncated ({why}): {hint}")

    try:
        read_state(checkpoint)
    except SiloError as err:
        raise SiloError(f"{err}: {hint}") from None
    for path in sorted(checkpoint.iterdir()):
        if not path.is_file() or path.name == STATE_FILE:
            continue
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                load_file(str(path))
            elif path.suffix in (".bin", ".pt", ".pkl"):
                with zipfile.ZipFile(path) as archive:  # torch.save's format; read every member, unpickle nothing
                    bad = archive.testzip()
                if bad is not None:
                    raise ValueError(f"member {bad} is corrupt")
        except Exception as err:  # noqa: BLE001 - safetensors, zipfile and OS errors alike mean "cannot use it"
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise damaged(path, first) from None


def _prior_dtype(name: str, device: torch.device, mixed: str) -> torch.dtype:
    """The frozen prior runs in a lower dtype on GPU (it is never trained, so precision loss is harmless)."""
    if name != "auto":
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]
    if device.type != "cuda":
        return torch.bfloat16 if mixed == "bf16" else torch.float32
    if mixed == "fp16" or not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def _versions() -> dict[str, str]:
    import importlib.metadata as md
    import platform

    from silo._version import __version__

    out = {"python": platform.python_version(), "silo": __version__}  # the distribution is silo-restore
    for pkg in ("torch", "diffusers", "accelerate"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    """Tracker-safe config: scalars as they are, everything else as JSON text."""
    return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in d.items()}


def _unlock_on_error(method):
    """A trainer step that gives the output folder's lock back when it fails (``train`` also when it ends)."""
    import functools

    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            self.release()
            raise

    return wrapped


class OperatorTrainer:
    """``setup()`` (checks and loads everything, locks the output folder), ``resume()``, ``train()`` -> the model
    card. The lock is given back when ``train()`` ends or any step fails."""

    def __init__(self, cfg: TrainOperatorConfig) -> None:
        cfg.check()
        self.cfg, self.out = cfg, Path(cfg.output)
        self.step, self.val_losses = 0, {}
        self.lock: TrainingLock | None = None

    def release(self) -> None:
        """Remove this run's lock on the output folder (kept until the run ends, even when it fails)."""
        if self.lock is not None:
            self.lock.release()

    # -- set-up: cheap checks first, then the prior and the operator --------------------------------
    @_unlock_on_error
    def setup(self) -> OperatorTrainer:
        cfg = self.cfg
        if self.out.exists() and not self.out.is_dir():
            raise SiloError(f"--output-dir {self.out} exists and is not a folder")
        self._checkpoint_to_resume(validate=False)  # a new run into a folder of checkpoints: said before any work
        self.accelerator = acc = self._accelerator()
        self._take_lock()  # from here the folder is this run's: its checkpoints cannot change under it
        self.resume_from = self._checkpoint_to_resume()  # every file of it read: a damaged one is one line
        from silo.priors.prior import Prior

        with acc.main_process_first():  # downloads (Hub dataset or prior) happen once, then hit the cache
            source = tdata.open_source(cfg.data, cfg.dataset, cfg.split, cfg.image_column)
            self.split = tdata.split_data(source, cfg.validation_images, cfg.seed)
            tdata.check_images(self.split, cfg.crop_size)
            self.prior = Prior.from_pretrained(
                cfg.prior, device=acc.device, dtype=_prior_dtype(cfg.prior_dtype, acc.device, cfg.mixed_precision)
            )
        self.task, self.degradation = self._degradation()
        m = self.prior.size_multiple
        if cfg.crop_size % m:
            raise SiloError(f"--crop-size {cfg.crop_size} must be a multiple of {m} px for this prior")
        self.degradation.check_size(cfg.crop_size, cfg.crop_size)
        mask_channel = cfg.kind == "readout" and self.degradation.uses_mask and self.degradation.random_params
        defaults = OPERATOR_CLASSES[cfg.kind].training_defaults
        self.sigma_max = defaults.noise_sigma_max if cfg.noise_sigma_max is None else float(cfg.noise_sigma_max)
        if cfg.kernel_aware and not self.degradation.uses_kernel:
            what = f"task {self.task.name}" if self.task is not None else f"degradation {cfg.degradation}"
            raise SiloError(f"--kernel-aware needs a blur task; the {what} has no blur kernel")
        self.objective = Objective(
            self.prior, self.degradation, cfg.kind, self.sigma_max, cfg.loss, cfg.clamp_target, mask_channel
        )
        from accelerate.utils import set_seed

        set_seed(cfg.seed)  # the operator's initial weights
        model = build_operator(
            cfg.kind, self.prior, cfg.crop_size, mask_channel, cfg.operator_config, cfg.init_operator, cfg.kernel_aware
        )
        freeze_parameters(model, defaults.frozen_parameters)  # parts SILO leaves unused (they would stall DDP)
        self.lr = float(cfg.lr)
        optimizer = defaults.optimizer_class()([p for p in model.parameters() if p.requires_grad], lr=self.lr)
        self.identity = self._identity(model)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        return self

    def _take_lock(self) -> None:
        """The main process locks the output folder; every process learns whether it could (one line if not)."""
        from accelerate.utils import broadcast_object_list

        acc, why = self.accelerator, [None]
        if acc.is_main_process:
            try:
                self.lock = TrainingLock(self.out).acquire()
            except SiloError as err:
                why = [str(err)]
        if acc.num_processes > 1:
            broadcast_object_list(why)
        if why[0] is not None:
            raise SiloError(why[0])

    def _checkpoint_to_resume(self, validate: bool = True) -> Path | None:
        root, want = self.out / "checkpoints", self.cfg.resume_from_checkpoint
        existing = list_checkpoints(root)
        if want is None:
            if existing:
                raise SiloError(
                    f"--output-dir {self.out} already holds checkpoints (last {existing[-1].name}); pass "
                    f"--resume-from-checkpoint latest to continue, or choose a new --output-dir"
                )
            return None
        if want == "latest":
            path = existing[-1] if existing else None
        else:
            path = Path(want)
            if not (path / STATE_FILE).is_file():
                raise SiloError(
                    f"--resume-from-checkpoint {want}: not a silo train-operator checkpoint (no {STATE_FILE})"
                )
        if path is not None and validate:
            check_checkpoint(path, [p for p in existing if p != path])
        return path

    def _accelerator(self):
        from importlib.util import find_spec

        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        cfg = self.cfg
        report = cfg.report_to
        if report == "auto":
            from silo.training.tracking import tensorboard_installed

            report = "tensorboard" if tensorboard_installed("logs/metrics.jsonl") else "none"
        elif report != "none" and find_spec(report) is None:
            raise SiloError(
                f"--report-to {report}: {report} is not installed (pip install {report}), or pass --report-to none"
            )
        if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise SiloError("--mixed-precision fp16 needs a GPU; use bf16 or no on CPU")
        # accelerate only forms a CPU process group when told it runs on CPU (torchrun on a machine without GPUs)
        launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("LOCAL_RANK", "-1")) >= 0
        try:
            return Accelerator(
                cpu=cfg.cpu or (launched and not torch.cuda.is_available()),
                mixed_precision=cfg.mixed_precision,
                gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                log_with=None if report == "none" else [report],
                project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "logs")),
            )
        except ValueError as err:
            raise SiloError(f"cannot set up accelerate: {str(err).splitlines()[0]}") from None

    def _degradation(self):
        cfg = self.cfg
        if cfg.degradation is not None:
            from silo.degradations.user import load_user_degradation

            deg = load_user_degradation(cfg.degradation, 0.0, cfg.crop_size, self.accelerator.device)
            return None, deg
        from silo.degradations.tasks import load_task

        task = load_task(cfg.task)
        return task, task.degradation

    def _identity(self, model: torch.nn.Module) -> dict[str, Any]:
        """What a checkpoint must share with the run resuming it: everything but the RESUMABLE settings."""
        from silo.models import prior_location

        cfg = asdict(self.cfg)
        ident = {k: v for k, v in cfg.items() if k not in RESUMABLE and k != "operator_config"}
        ident["prior"] = prior_location(ident["prior"])  # silo-tiny by name or by folder: the same prior
        for key in ("prior", "data", "dataset"):
            if ident.get(key) and Path(ident[key]).exists():
                ident[key] = str(Path(ident[key]).resolve())
        if self.cfg.degradation is not None:  # the function, by name and source; not the path it was reached by
            ident["degradation"] = {
                "task": self.degradation.name,
                "source_sha256": getattr(self.degradation, "source_sha256", None),
            }
        ident.update(
            noise_sigma_max=self.sigma_max,
            lr=self.lr,
            validation_images=len(self.split.val),
            degradation_settings=json.loads(json.dumps(self.degradation.describe(), default=str)),
            operator=operator_config(model),
        )
        return ident

    def _from_path_identity(self, path: Path, old: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint that named its degradation by path (before source hashes): the same function name
        resumes, with a note that its source could not be compared."""
        from silo.degradations.user import task_name

        new = self.identity["degradation"]
        try:
            same = task_name(old["degradation"]) == new["task"]
        except SiloError:
            same = False
        if not same:
            return old
        if self.accelerator.is_main_process:
            print(
                f"silo train-operator: note: checkpoint {path} names its degradation by path only; its source "
                "cannot be compared",
                file=sys.stderr,
            )
        return {**old, "degradation": new, "degradation_settings": self.identity["degradation_settings"]}

    # -- resume ----------------------------------------------------------------------------------------
    @_unlock_on_error
    def resume(self) -> OperatorTrainer:
        path = self.resume_from
        if path is None:
            if self.cfg.resume_from_checkpoint == "latest" and self.accelerator.is_main_process:
                print(f"no checkpoint in {self.out / 'checkpoints'} yet: starting a new run")
            return self
        state = read_state(path)
        old = {**ADDED_LATER, **state.get("config", {})}
        if isinstance(old.get("degradation"), str) and isinstance(self.identity.get("degradation"), dict):
            old = self._from_path_identity(path, old)
        then = state.get("processes") or len(list(path.glob("random_states_*.pkl")))  # older: one RNG file each
        now, per_process = self.accelerator.num_processes, self.cfg.batch_size * self.cfg.gradient_accumulation_steps
        if then and then != now:
            raise SiloError(
                f"checkpoint {path} was trained on {then} processes (effective batch {then * per_process}), "
                f"this run has {now}: resume on {then} processes, since --batch-size is per process and "
                f"every random draw follows the process"
            )
        old_deg, new_deg = old.get("degradation"), self.identity.get("degradation")
        if (
            isinstance(old_deg, dict)
            and isinstance(new_deg, dict)
            and old_deg.get("task") == new_deg.get("task")
            and old_deg.get("source_sha256") != new_deg.get("source_sha256")
        ):
            then_hash, now_hash = str(old_deg.get("source_sha256"))[:12], str(new_deg.get("source_sha256"))[:12]
            raise SiloError(
                f"checkpoint {path} was trained on another version of {self.cfg.degradation} (source "
                f"sha256 {then_hash} then, {now_hash} now): undo the edit to resume, or train the new "
                f"version into a new --output-dir"
            )
        if old.get("kind") in OPERATOR_CLASSES and isinstance(old.get("operator"), dict):
            keys = set(OPERATOR_CLASSES[old["kind"]].init_keys())
            old["operator"] = {**{k: v for k, v in ADDED_LATER_OPERATOR.items() if k in keys}, **old["operator"]}
        for key in sorted(set(old) | set(self.identity)):
            if old.get(key) != self.identity.get(key):
                raise SiloError(
                    f"checkpoint {path} is from another configuration: {key} was {old.get(key)!r}, "
                    f"now {self.identity.get(key)!r}; resume with the same settings or use a new --output-dir"
                )
        try:
            self.accelerator.load_state(str(path))
        except Exception as err:  # noqa: BLE001 - torch, safetensors and pickle each raise their own types
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise SiloError(f"checkpoint {path}: cannot load ({type(err).__name__}: {first})") from None
        self.step = int(state["step"])
        self.val_losses = {int(k): v for k, v in state.get("val_losses", {}).items()}
        if self.accelerator.is_main_process:
            print(f"resumed from {path} at step {self.step}")
        return self

    # -- the loop ----------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        try:
            return self._train()
        finally:
            self.release()

    def _train(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        cfg, acc = self.cfg, self.accelerator
        acc.init_trackers("silo-train-operator", config=_flat({**self.identity, "processes": acc.num_processes}))
        if acc.is_main_process:
            values = {**asdict(cfg), "noise_sigma_max": self.sigma_max}
            shown = ", ".join(f"{k} {json.dumps(values[k])} ({v})" for k, v in cfg.setting_sources.items())
            print(f"silo train-operator: settings: {shown}", file=sys.stderr)
            (self.out / "logs").mkdir(parents=True, exist_ok=True)
            self._trim_metrics()
            _write_atomic(
                self.out / "training_config.json",
                json.dumps({**self.identity, "setting_sources": cfg.setting_sources}, indent=2),
            )
        rank, world = acc.process_index, acc.num_processes
        self.val_x, self.val_idx = tdata.validation_images(self.split, cfg.crop_size, rank, world)
        loader = tdata.train_loader(
            self.split,
            cfg.crop_size,
            cfg.batch_size,
            cfg.seed,
            rank,
            world,
            self.step * cfg.gradient_accumulation_steps,
            cfg.num_workers,
        )
        batches = iter(loader)
        started, first_step = time.perf_counter(), self.step
        if self.step == 0 and self.split.val:
            self.validate()  # the loss before training, on the fixed validation draws
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.step,
            desc="train-operator",
            dynamic_ncols=True,
            disable=not (acc.is_main_process and cfg.show_progress),
        )
        self.first_batch: list[int] | None = None
        while self.step < cfg.max_steps:
            loss = self._train_step(batches)
            self.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            self._log({"train/loss": loss, "train/lr": self.lr})
            if self.split.val and (self.step % cfg.validation_every == 0 or self.step == cfg.max_steps):
                self.validate()
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps:
                self.save_checkpoint()
        bar.close()
        if self.split.val and self.step not in self.val_losses:
            self.validate()
        return self.export(time.perf_counter() - started, self.step - first_step)

    def _trim_metrics(self) -> None:
        """Drop the lines of steps this run will replay (after the checkpoint it resumed from; all of them for a
        new run), so that ``metrics.jsonl`` has each step once."""
        path = self.out / "logs" / "metrics.jsonl"
        if not path.is_file():
            return
        kept, dropped = [], 0
        for line in path.read_text(errors="replace").splitlines():
            try:
                step = json.loads(line).get("step")
            except (json.JSONDecodeError, AttributeError):
                step = None  # a line cut short by a kill: replayed
            if self.step > 0 and isinstance(step, int) and step <= self.step:
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            _write_atomic(path, "".join(f"{line}\n" for line in kept))
            print(
                f"silo train-operator: {path}: dropped {dropped} lines of steps after {self.step}, which this run "
                "replays",
                file=sys.stderr,
            )

    def _next(self, batches) -> tuple[Tensor, Tensor]:
        try:
            return next(batches)
        except SiloError as err:  # one raised in a DataLoader worker arrives with the worker's traceback
            raise SiloError(tdata.worker_error_line(err)) from None

    def _train_step(self, batches) -> float:
        cfg, acc = self.cfg, self.accelerator
        losses = []
        for k in range(cfg.gradient_accumulation_steps):
            micro = self.step * cfg.gradient_accumulation_steps + k
            x, idx = self._next(batches)
            if self.first_batch is None:
                self.first_batch = [int(i) for i in idx]
            sample = self.objective.draw(x, derive_seed(cfg.seed, micro, acc.process_index))
            with acc.accumulate(self.model):
                with acc.autocast():
                    pred = self.objective.predict(self.model, sample)
                loss = self.objective.loss(pred, sample.target)
                acc.backward(loss)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        loss = float(acc.reduce(torch.stack(losses).mean(), "mean"))
        if not math.isfinite(loss):
            raise SiloError(
                f"the training loss became {loss} at step {self.step + 1}; lower --lr, use --clamp-target "
                f"or --mixed-precision no"
            )
        return loss

    # -- validation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> float | None:
        """Loss on the held-out images with fixed draws (sigma = sigma_max / 2), and a grid PNG."""
        cfg, acc = self.cfg, self.accelerator
        model = acc.unwrap_model(self.model).eval()  # no DDP collectives: shards may differ in size
        total = torch.zeros(2, device=acc.device)
        rows = []
        for start in range(0, len(self.val_x), cfg.batch_size):
            xb = self.val_x[start : start + cfg.batch_size]
            s = self.objective.draw(xb, derive_seed(cfg.seed, 2**31, self.val_idx[start]), sigma=self.sigma_max / 2)
            with acc.autocast():
                pred = self.objective.predict(model, s)
            per = self.objective.loss(pred, s.target, per_image=True)
            total += torch.stack([per.sum(), torch.tensor(float(len(per)), device=per.device)]).to(total)
            if start == 0 and acc.is_main_process:
                rows = self._grid_rows(xb, s, pred)
        model.train()
        total = acc.reduce(total, "sum")
        value = float(total[0] / total[1]) if total[1] > 0 else None
        self.val_losses[self.step] = value
        self._log({"val/loss": value})
        if acc.is_main_process and value is not None:
            from tqdm.auto import tqdm

            tqdm.write(
                f"silo train-operator: step {self.step}/{cfg.max_steps}: validation loss {value:.4f}", file=sys.stderr
            )
        if rows and acc.is_main_process:
            self._save_grid(rows, value)
        return value

    def _grid_rows(self, x: Tensor, s: Sample, pred: Tensor, n: int = 4) -> list[list[tuple[str, Tensor]]]:
        dec = lambda z: self.prior.decode(z[:n]).float().clamp(-1, 1).cpu()  # noqa: E731
        target, output = dec(s.target), dec(pred.float())
        return [
            [
                ("x", x[i : i + 1].cpu()),
                ("A(x)+n", s.measurement[i : i + 1].cpu()),
                ("D(E(A(x)+n))", target[i : i + 1]),
                ("D(H(E(x)))", output[i : i + 1]),
            ]
            for i in range(len(target))
        ]

    def _save_grid(self, rows: list[list[tuple[str, Tensor]]], value: float | None) -> None:
        from PIL import Image

        from silo.io.grid import make_grid

        images = [
            make_grid(r, [f"step {self.step}, validation loss {value:.4f}"] if i == len(rows) - 1 else [])
            for i, r in enumerate(rows)
        ]
        canvas = Image.new("RGB", (max(im.width for im in images), sum(im.height for im in images)), "white")
        top = 0
        for im in images:
            canvas.paste(im, (0, top))
            top += im.height
        folder = self.out / "validation"
        folder.mkdir(parents=True, exist_ok=True)
        canvas.save(folder / f"step-{self.step:07d}.png")
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image("validation/grid", np.asarray(canvas), self.step, dataformats="HWC")
            elif tracker.name == "wandb":
                import wandb

                tracker.log({"validation/grid": wandb.Image(canvas)}, step=self.step)

    def _log(self, values: dict[str, Any]) -> None:
        values = {k: v for k, v in values.items() if v is not None}
        self.accelerator.log(values, step=self.step)
        if self.accelerator.is_main_process:
            with open(self.out / "logs" / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": self.step, **values}) + "\n")

    # -- checkpoints and the result --------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """``accelerator.save_state`` into a temporary folder, renamed when complete; keeps the newest K."""
        acc, root = self.accelerator, self.out / "checkpoints"
        final, tmp = root / f"step-{self.step}", root / f".tmp-step-{self.step}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            root.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {
                "step": self.step,
                "config": self.identity,
                "val_losses": self.val_losses,
                "processes": acc.num_processes,
            }
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in list_checkpoints(root)[: -self.cfg.checkpoints_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def export(self, seconds: float, steps_run: int) -> dict[str, Any]:
        """The operator folder (``save_pretrained``: config.json + safetensors) and ``model_card.json``."""
        from accelerate.utils import gather_object

        acc, cfg = self.accelerator, self.cfg
        first_batches = gather_object([self.first_batch or []])
        card = {
            "prior": self.identity["prior"],
            "prior_description": self.prior.describe(),
            # a user degradation's task name (user-FILE-CALLABLE) and source hash: silo restore checks them
            "task": self.task.name if self.task else self.degradation.name,
            "degradation": cfg.degradation or self.degradation.describe(),
            "degradation_source_sha256": getattr(self.degradation, "source_sha256", None) if cfg.degradation else None,
            "kind": cfg.kind,
            "noise_sigma_range": [0.0, self.sigma_max],
            "noise_sigma_scale": "std on the [0, 1] image scale (the published code's [-1, 1] scale is twice this)",
            "loss": cfg.loss,
            "clamp_target": cfg.clamp_target,
            "crop_size": cfg.crop_size,
            "data": {
                "source": cfg.data or cfg.dataset,
                "split": cfg.split if cfg.dataset else None,
                "train_images": len(self.split.train),
                "validation_images": len(self.split.val),
            },
            "steps": self.step,
            "batch_size": cfg.batch_size,
            "effective_batch_size": cfg.batch_size * cfg.gradient_accumulation_steps * acc.num_processes,
            "processes": acc.num_processes,
            "lr": self.lr,
            "mixed_precision": cfg.mixed_precision,
            "initial_validation_loss": self.val_losses.get(0),
            "final_validation_loss": self.val_losses.get(self.step),
            "validation_losses": {str(k): v for k, v in sorted(self.val_losses.items())},
            "first_batch_per_process": first_batches,
            "seconds_this_session": round(seconds, 2),
            "steps_this_session": steps_run,
            "operator": self.identity["operator"],
            "setting_sources": cfg.setting_sources,
            "versions": _versions(),
        }
        if acc.is_main_process:
            acc.unwrap_model(self.model).save_pretrained(str(self.out))
            _write_atomic(self.out / CARD_FILE, json.dumps(card, indent=2))
            from silo.hub import write_model_card

            write_model_card(self.out, card)  # README.md with Hub metadata: the folder uploads as it is
        acc.wait_for_everyone()
        acc.end_training()
        return card


def train_operator(cfg: TrainOperatorConfig) -> dict[str, Any]:
    """Set up, resume if asked, train, and write the operator folder; returns the model card. The output folder
    is locked for the run (:class:`~silo.training.lock.TrainingLock`)."""
    trainer = OperatorTrainer(cfg)
    try:
        return trainer.setup().resume().train()
    finally:
        trainer.release()


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
