"""The models of a run: the prior (loaded once) and, per task and method, the latent operator and its card.

The operator card that sets a task's step size and warm start is, for every method, the card of the operator
SILO uses on the task (as ``--operator`` / ``--operator-kind`` choose it), so that every method starts where
SILO starts.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from silo.cards import OperatorCard, PriorCard
from silo.errors import SiloError


def load_prior(source: str | Path, device: torch.device, dtype: torch.dtype):
    """A :class:`~silo.priors.prior.Prior` (with its card, ``prior.card``)."""
    from silo.priors.prior import Prior

    return Prior.from_pretrained(source, device=device, dtype=dtype)


def parse_operator_specs(specs: list[str] | str | None) -> list[str]:
    if specs is None:
        return []
    return [specs] if isinstance(specs, (str, Path)) else [str(s) for s in specs]


def operator_source(task_name: str, specs: list[str]) -> Path | None:
    """``--operator`` entries: ``TASK=PATH`` for one task, else ``PATH`` for all (``{task}`` is replaced)."""
    generic = None
    for spec in specs:
        task, sep, path = spec.partition("=")
        if sep and not Path(spec).exists():
            if task == task_name:
                return Path(path)
        else:
            generic = spec
    return Path(generic.replace("{task}", task_name)) if generic is not None else None


def shipped_operator(task_name: str, kind: str | None, method: str | None) -> Path | None:
    """The shipped operator of a task: ``kind`` if given; else the card's default kind, or the first shipped
    kind the method can feed (x0-space SILO cannot feed a readout operator)."""
    from silo.models import shipped_card, shipped_root
    from silo.operators import OPERATOR_CLASSES
    from silo.samplers.registry import SAMPLERS

    folder = shipped_root() / "operators"
    if kind:
        path = folder / f"{task_name}-{kind}"
        if not (path / "config.json").is_file():
            raise SiloError(f"no shipped {kind} operator for task {task_name!r}: pass --operator FOLDER")
        return path
    default = (shipped_card() or {}).get("default_operator", {}).get(task_name)
    kinds = ([default] if default else []) + [k for k in OPERATOR_CLASSES if k != default]
    spec = SAMPLERS.get(method) if method else None
    for k in kinds:
        path = folder / f"{task_name}-{k}"
        if not (path / "config.json").is_file():
            continue
        if spec is not None and spec.needs_operator and not _can_feed(spec, OPERATOR_CLASSES[k]):
            continue
        return path
    return None


def _can_feed(spec, cls) -> bool:
    """Whether a method gives an operator kind the latent input it reads (z0 or UNet features)."""
    return set(cls.can_read) & {"z0", "features"} <= set(spec.operator_inputs)


def task_mismatch(source: Path, task) -> str | None:
    """Why an operator whose card was written for one shipped degradation should not restore another, or None.

    Compared: the degradation the card records (its type and settings; the noise level aside, an operator is
    trained over a range of them) against the task's, so a task file of the same degradation under another
    name matches, and ``sr4``'s operator on ``sr8``, ``jpeg`` or an inpainting does not. A card without a
    degradation is compared by task name; an operator without a card is not compared."""
    import json

    card_path = Path(source) / "model_card.json"
    try:
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    except (OSError, ValueError):
        return None  # the card reader says what is wrong with it
    trained = card.get("degradation") if isinstance(card, dict) else None
    name = card.get("task") if isinstance(card, dict) else None
    if not isinstance(name, str) or name.startswith("user-"):
        return None  # user degradations: silo.degradations.user.operator_mismatch
    now = {k: v for k, v in task.degradation.describe().items() if k != "noise_sigma"}
    if isinstance(trained, dict):
        then = {k: v for k, v in trained.items() if k != "noise_sigma"}
        if then.get("name") is None or all(now.get(k) == v for k, v in then.items()):
            return None
        what = ", ".join(f"{k} {v}" for k, v in then.items() if k != "name")
        trained_for = f"{name} ({then['name']}{', ' + what if what else ''})"
    elif name == task.name:
        return None
    else:
        trained_for = name
    return (
        f"operator {source} was trained for {trained_for}, not {task.name} (its model_card.json): pass "
        f"--task {name}, another --operator, or --allow-operator-mismatch to use it anyway"
    )


def load_task_operator(
    source: Path, kind: str | None, prior, task, device: torch.device, allow_mismatch: bool = False
) -> torch.nn.Module:
    """An operator checked against the prior and the task, with its card attached (``operator.card``).
    ``allow_mismatch``: use an operator whose card names another user degradation anyway, and say so."""
    from silo.operators import check_compatible, load_operator

    source = Path(source)
    if source.is_file():
        from silo.operators.published import load_published_operator

        operator = load_published_operator(source, kind)
        operator.card = OperatorCard.read(source)
    else:
        operator = load_operator(source)
    from silo.degradations.user import operator_mismatch

    why = operator_mismatch(operator.card, task, str(source)) or task_mismatch(source, task)  # trained for another
    if why and not allow_mismatch:
        raise SiloError(why)
    if why:
        print(f"silo: note: --allow-operator-mismatch: {why.partition(':')[0]}; using it anyway", file=sys.stderr)
        operator.mismatch_allowed = why.partition(":")[0]  # each result's log keeps it
    operator.to(device).eval().requires_grad_(False)
    features = None
    if getattr(operator, "needs_features", False):
        from silo.operators.features import feature_channels

        features = feature_channels(prior.unet)
    if getattr(operator, "uses_unet_sigma_embedding", True):
        check_compatible(operator, prior.latent_channels, prior.embedding_dim, features, prior.vae_scale)
    elif getattr(operator.config, "latent_channels", prior.latent_channels) != prior.latent_channels:
        raise SiloError(
            f"operator {source} is for {operator.config.latent_channels} latent channels, "
            f"the prior has {prior.latent_channels}"
        )
    deg = task.degradation
    if getattr(operator.config, "mask_channel", False) and not deg.uses_mask:
        raise SiloError(f"operator {source} takes an inpainting mask but the task is {task.name}")
    if getattr(operator, "needs_blur_kernel", False) and not deg.uses_kernel:
        raise SiloError(f"operator {source} is kernel-aware (reads a blur kernel) but the task {task.name} has none")
    operator.source = str(source)
    return operator


@dataclass
class Models:
    """A run's prior and its operators, loaded once each; what every front door asks for models."""

    prior: Any
    prior_source: str
    device: torch.device
    operator_specs: list[str] = field(default_factory=list)
    operator_kind: str | None = None
    preset: Any = None
    weights_dir: str | Path = "trained_ckpt"
    shipped_prior: bool = False
    allow_operator_mismatch: bool = False  # --allow-operator-mismatch
    _operators: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)

    @classmethod
    def load(
        cls,
        prior: str | Path | None,
        device: torch.device,
        dtype: torch.dtype,
        operators: list[str] | str | None = None,
        operator_kind: str | None = None,
        preset: Any = None,
        weights_dir: str | Path = "trained_ckpt",
        allow_operator_mismatch: bool = False,
    ) -> Models:
        from silo.models import default_prior_path, is_shipped_prior

        source = prior or (preset.prior if preset is not None else None)
        shipped = source is None or is_shipped_prior(source)  # --prior silo-tiny: its shipped operators fit
        source = str(source or default_prior_path())
        return cls(
            load_prior(source, device, dtype),
            source,
            device,
            parse_operator_specs(operators),
            operator_kind or (preset.kind if preset is not None else None),
            preset,
            weights_dir,
            shipped,
            allow_operator_mismatch,
        )

    @property
    def prior_card(self) -> PriorCard:
        return self.prior.card

    def to(self, device: str | torch.device) -> Models:
        """Move the prior and every operator loaded so far to ``device`` (the Python pipeline's ``.to``)."""
        device = torch.device(device)
        prior = self.prior
        for module in (prior.vae, prior.unet, prior.text_encoder):
            if module is not None:
                module.to(device)
        prior.device = device
        for operator in self._operators.values():
            operator.to(device)
        self.device = device
        return self

    def operator_path(self, task, method: str | None) -> Path | None:
        """Where the operator of ``task`` for ``method`` comes from, or None if there is none."""
        given = operator_source(task.name, self.operator_specs)
        if given is not None:
            from silo.hub import resolve_operator

            return resolve_operator(given)  # a Hub id owner/name[/subfolder]: its folder in the Hub cache
        if self.preset is not None:
            return self.preset.operator_path(self.weights_dir)
        if self.shipped_prior:  # the shipped operators fit the shipped prior only
            return shipped_operator(task.name, self.operator_kind, method)
        return None

    def operator(self, task, method: str) -> Any:
        """The loaded operator ``method`` uses on ``task`` (None for methods without one)."""
        from silo.samplers.registry import uses_operator

        if not uses_operator(method):
            return None
        path = self.operator_path(task, method)
        if path is None:
            raise SiloError(
                f"{method} needs a latent operator for task {task.name}: pass --operator FOLDER "
                "(the shipped operators fit the shipped prior only)"
            )
        key = (task.name, str(path))
        if key not in self._operators:
            self._operators[key] = load_task_operator(
                path, self.operator_kind, self.prior, task, self.device, self.allow_operator_mismatch
            )
        return self._operators[key]

    def operator_card(self, task, method: str) -> OperatorCard:
        """The card that sets ``task``'s sampling defaults, for every method alike: that of the operator SILO
        uses on the task (as ``--operator`` / ``--operator-kind`` choose it), so that every method starts
        where SILO starts. ``method`` is accepted for symmetry with :meth:`operator`; it does not change it."""
        try:
            path = self.operator_path(task, "silo")
        except SiloError:  # a preset's operator file not unpacked: a method without an operator runs anyway
            return OperatorCard()
        if path is None:
            return OperatorCard()
        loaded = self._operators.get((task.name, str(path)))
        return loaded.card if loaded is not None else OperatorCard.read(path)
