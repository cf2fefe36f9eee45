"""The operator contract, checked for every kind in ``OPERATOR_CLASSES`` and every optional input it can read.

A kind added to the registry gets all of these with no edit here: instances are built through
``for_prior`` (sized for a tiny prior), inputs come from one :class:`OperatorInputs` holding everything any
kind may read, and the variants (mask, blur kernel, no sigma conditioning) follow from what the class
declares. Only the check against the old calling convention names kinds: it pins the refactor of the
three kinds that had one.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from silo.errors import SiloError  # noqa: E402
from silo.operators import OPERATOR_CLASSES, load_operator, trainable_kinds  # noqa: E402
from silo.operators.base import INPUT_NAMES, OperatorInputs, TrainingDefaults, call_operator  # noqa: E402
from silo.operators.features import UNetFeatureHooks  # noqa: E402

NORM_SIZE = 8  # the reference size of the operators' resizable maps: 8x8 latents use them as stored
SIZES = [(8, 8), (12, 16)]
SIGMA = 0.03


def variants() -> list:
    """``(kind, for_prior options)`` for the plain instance and each optional input or config the class has."""
    out = []
    for kind, cls in OPERATOR_CLASSES.items():
        out.append(pytest.param(kind, {}, id=kind))
        for name in ("mask", "kernel"):
            if name in cls.can_read:
                out.append(pytest.param(kind, {name: True}, id=f"{kind}-{name}"))
        if "sigma_conditioned" in cls.init_keys():
            out.append(pytest.param(kind, {"sigma_conditioned": False}, id=f"{kind}-unconditioned"))
    return out


VARIANTS = variants()


def build(prior, kind: str, options: dict):
    """A small operator moved off its initialisation (so outputs depend on every weight), in eval mode."""
    torch.manual_seed(0)
    op = OPERATOR_CLASSES[kind].for_prior(prior, norm_size=NORM_SIZE, **options)
    with torch.no_grad():
        for p in op.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return op.eval()


def full_inputs(prior, batch: int = 2, size: tuple[int, int] = (12, 16), seed: int = 0) -> OperatorInputs:
    """Everything any kind may read, for a batch at latent size ``size``."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    s = prior.vae_scale
    z0 = torch.randn(batch, prior.latent_channels, h, w, generator=g)
    z_t = torch.randn(batch, prior.latent_channels, h, w, generator=g)
    with UNetFeatureHooks(prior.unet) as hooks, torch.no_grad():
        prior.denoise(z_t, torch.full((batch,), 500))
        features = [f.float() for f in hooks.features]
    mask = torch.ones(batch, 1, h * s, w * s)
    for i in range(batch):  # a different known region per image
        top, left = (
            int(torch.randint(0, h * s // 2, (1,), generator=g)),
            int(torch.randint(0, w * s // 2, (1,), generator=g)),
        )
        mask[i, :, top : top + h * s // 2, left : left + w * s // 2] = 0
    kernel = torch.rand(batch, 9, 9, generator=g)
    kernel = kernel / kernel.sum((1, 2), keepdim=True)
    return OperatorInputs(z0=z0, features=features, noise_sigma=SIGMA, mask=mask, kernel=kernel, latent_size=size)


def image(inputs: OperatorInputs, i: int) -> OperatorInputs:
    """The inputs of image ``i`` alone."""
    one = slice(i, i + 1)
    return OperatorInputs(
        z0=inputs.z0[one],
        features=[f[one] for f in inputs.features],
        noise_sigma=inputs.noise_sigma,
        mask=inputs.mask[one],
        kernel=inputs.kernel[one],
        latent_size=inputs.latent_size,
    )


def run(op, inputs: OperatorInputs, prior) -> torch.Tensor:
    with torch.no_grad():
        return op.apply(inputs, prior)


@pytest.mark.parametrize("kind, options", VARIANTS)
def test_save_and_load_give_identical_outputs(tiny_prior, kind, options, tmp_path):
    op = build(tiny_prior, kind, options)
    op.save_pretrained(tmp_path / "op")
    inputs = full_inputs(tiny_prior)
    expected = run(op, inputs, tiny_prior)
    for loaded in (load_operator(tmp_path / "op"), type(op).from_pretrained(tmp_path / "op").eval()):
        assert type(loaded) is type(op) and loaded.reads == op.reads
        # same weights; CPU kernels may round differently on differently allocated tensors
        torch.testing.assert_close(run(loaded, inputs, tiny_prior), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind, options", VARIANTS)
def test_any_latent_size_gives_the_measurement_latent_shape(tiny_prior, kind, options, size):
    out = run(build(tiny_prior, kind, options), full_inputs(tiny_prior, size=size), tiny_prior)
    assert out.shape == (2, tiny_prior.latent_channels, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kind, options", VARIANTS)
def test_a_batch_equals_the_single_runs_stacked(tiny_prior, kind, options):
    op = build(tiny_prior, kind, options)
    inputs = full_inputs(tiny_prior, batch=3)
    batch = run(op, inputs, tiny_prior)
    singles = torch.cat([run(op, image(inputs, i), tiny_prior) for i in range(3)])
    torch.testing.assert_close(batch, singles, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind, options", VARIANTS)
def test_float32_and_bfloat16_both_run(tiny_prior, kind, options):
    op = build(tiny_prior, kind, options)
    inputs = full_inputs(tiny_prior)
    full = run(op, inputs, tiny_prior)
    half = run(copy.deepcopy(op).to(torch.bfloat16), inputs, tiny_prior)  # float32 inputs: apply casts them
    assert full.dtype == torch.float32 and half.dtype == torch.bfloat16
    error = float((half.float() - full).norm() / full.norm())
    assert error < 0.03, error


@pytest.mark.parametrize("kind, options", VARIANTS)
def test_reads_is_truthful(tiny_prior, kind, options):
    """Inputs outside ``reads`` may be missing and change nothing; a missing one it reads is a one-line error."""
    op = build(tiny_prior, kind, options)
    assert op.reads <= type(op).can_read <= set(INPUT_NAMES)
    inputs = full_inputs(tiny_prior)
    expected = run(op, inputs, tiny_prior)
    unread = [name for name in INPUT_NAMES if name not in op.reads]
    assert torch.equal(run(op, inputs.without(*unread), tiny_prior), expected)
    for name in op.reads:
        with pytest.raises(SiloError) as err:
            run(op, inputs.without(name), tiny_prior)
        assert "\n" not in str(err.value) and str(err.value)


@pytest.mark.parametrize("kind, options", VARIANTS)
def test_apply_follows_the_sampler_entry_point(tiny_prior, kind, options):
    """``apply_operator`` (the samplers' call) is ``apply`` on the inputs it is given."""
    from silo.samplers.common import apply_operator

    op = build(tiny_prior, kind, options)
    x = full_inputs(tiny_prior)
    with torch.no_grad():
        out = apply_operator(op, tiny_prior, x.z0, x.noise_sigma, x.features, x.mask, x.latent_size, x.kernel)
    assert torch.equal(out, run(op, x, tiny_prior))


def old_calling_convention(operator, prior, z0_hat, sigma, features, mask, size, kernel):
    """The dispatch every caller repeated before the contract, kept as the reference for the refactor."""
    from silo.degradations.noise import to_model_scale

    batch = z0_hat.shape[0] if z0_hat is not None else features[0].shape[0]
    use_mask = mask if getattr(operator.config, "mask_channel", False) else None
    extra = {}
    if getattr(operator, "needs_blur_kernel", False):
        extra["kernel"] = kernel
    if not getattr(operator, "uses_unet_sigma_embedding", True):
        level = torch.full((batch,), float(to_model_scale(sigma)), device=prior.device)
        return operator(z0_hat.float(), None, mask=use_mask, noise_level=level)
    sigma_emb = None
    if getattr(operator.config, "sigma_conditioned", True):
        sigma_emb = prior.sigma_embedding(sigma, batch).float()
    if getattr(operator, "needs_features", False):
        return operator([f.float() for f in features], sigma_emb, mask=use_mask, size=size)
    return operator(z0_hat.float(), sigma_emb, mask=use_mask, **extra)


@pytest.mark.parametrize("kind, options", [v for v in VARIANTS if v.values[0] in ("cnn", "readout", "preserve")])
def test_apply_is_bit_identical_to_the_old_calling_convention(tiny_prior, kind, options):
    op = build(tiny_prior, kind, options)
    x = full_inputs(tiny_prior)
    with torch.no_grad():
        old = old_calling_convention(op, tiny_prior, x.z0, x.noise_sigma, x.features, x.mask, x.latent_size, x.kernel)
    assert torch.equal(run(op, x, tiny_prior), old)


@pytest.mark.parametrize("kind", list(OPERATOR_CLASSES))
def test_registry_entry_declares_the_contract(kind):
    cls = OPERATOR_CLASSES[kind]
    assert cls.kind == kind
    assert cls.can_read and cls.can_read <= set(INPUT_NAMES)
    defaults = cls.training_defaults
    assert defaults is None or isinstance(defaults, TrainingDefaults)
    assert (kind in trainable_kinds()) == (defaults is not None)


def test_the_cli_reads_the_registry_only_when_needed():
    """The kind options list OPERATOR_CLASSES without importing it (or torch) to build the ``silo`` parser."""
    import subprocess
    import sys

    code = (
        "import sys; from silo.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'silo.operators') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("kind", trainable_kinds())
def test_trainable_kinds_are_accepted_by_training_and_the_cli(tiny_prior, kind):
    from silo.cli import build_parser
    from silo.training.operator import TrainOperatorConfig

    TrainOperatorConfig(prior="p", output="o", kind=kind, task="sr4").check()
    args = build_parser().parse_args(
        ["train-operator", "--prior", "p", "--task", "sr4", "--data", "d", "--output-dir", "o", "--operator-kind", kind]
    )
    assert args.operator_kind == kind
    op = OPERATOR_CLASSES[kind].for_prior(tiny_prior, norm_size=NORM_SIZE)
    names = [name for name, _ in op.named_parameters()]
    from fnmatch import fnmatchcase

    for pattern in OPERATOR_CLASSES[kind].training_defaults.frozen_parameters:  # a typo would train everything
        assert any(fnmatchcase(name, pattern) for name in names), pattern


@pytest.mark.parametrize("kind, options", VARIANTS)
def test_published_marker_identifies_the_kind(tiny_prior, kind, options):
    from silo.operators.published import detect_kind

    op = build(tiny_prior, kind, options)
    if type(op).published_marker is None:
        pytest.skip(f"{kind} has no published format")
    assert detect_kind(op.state_dict()) == kind


def test_module_apply_still_applies_a_function(tiny_prior):
    """``apply`` shadows ``nn.Module.apply(fn)``; called with a function it still does what torch does."""
    for kind in OPERATOR_CLASSES:
        op = build(tiny_prior, kind, {})
        seen = []
        assert op.apply(seen.append) is op
        assert len(seen) == len(list(op.modules()))
    with pytest.raises(TypeError, match="OperatorInputs"):
        op.apply({"z0": None}, tiny_prior)


def test_a_plain_module_is_called_the_cnn_way(tiny_prior):
    """Hand-written operators without the contract: ``operator(z0, sigma_emb, mask=None)``."""

    class Plain(torch.nn.Module):
        def forward(self, z0, sigma_emb, mask=None):
            return z0 * 2 + sigma_emb.mean(1)[:, None, None, None]

    x = full_inputs(tiny_prior)
    out = call_operator(Plain(), x, tiny_prior)
    emb = tiny_prior.sigma_embedding(SIGMA, 2).float()
    assert torch.equal(out, x.z0 * 2 + emb.mean(1)[:, None, None, None])
    with pytest.raises(SiloError, match="z0"):
        call_operator(Plain(), x.without("z0"), tiny_prior)
