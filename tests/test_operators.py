"""Latent operators: save/load round trips, any latent size, batching, feature hooks, compatibility checks."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from silo.errors import SiloError  # noqa: E402
from silo.operators import (  # noqa: E402
    OPERATOR_CLASSES,
    CNNOperator,
    PreserveOperator,
    ReadoutOperator,
    check_compatible,
    load_operator,
)
from silo.operators.cnn import ResizableLayerNorm  # noqa: E402
from silo.operators.features import UNetFeatureHooks, feature_channels  # noqa: E402

EMB = 32
FEATS = [64, 64, 32]


def small_readout(**kwargs) -> ReadoutOperator:
    return ReadoutOperator(
        embedding_dim=EMB,
        feature_channels=FEATS,
        bottleneck_channels=32,
        projection_dim=64,
        head_channels=(32, 16),
        **kwargs,
    )


def make(kind: str, **kwargs):
    torch.manual_seed(0)
    if kind == "cnn":
        op = CNNOperator(embedding_dim=EMB, **kwargs)
    elif kind == "readout":
        op = small_readout(**kwargs)
    else:
        op = PreserveOperator(channels=(16, 24, 32), **kwargs)
    with torch.no_grad():  # move off the identity-like init so round trips compare real weights
        for p in op.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return op.eval()


def call(op, h: int, w: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(batch, EMB, generator=g)
    mask = torch.ones(batch, 1, 8 * h, 8 * w)
    mask[..., : 4 * h, : 4 * w] = 0
    with torch.no_grad():
        if op.kind == "cnn":
            return op(torch.randn(batch, op.config.latent_channels, h, w, generator=g), emb)
        if op.kind == "preserve":
            z = torch.randn(batch, op.config.latent_channels, h, w, generator=g)
            return op(z, noise_level=torch.linspace(0.0, 0.04, batch))
        feats = [torch.randn(batch, c, max(h // s, 1), max(w // s, 1), generator=g) for c, s in zip(FEATS, (4, 2, 1))]
        return op(feats, emb, mask=mask if op.config.mask_channel else None, size=(h, w))


@pytest.mark.parametrize("kind", ["cnn", "readout", "preserve"])
def test_class_attributes(kind):
    cls = OPERATOR_CLASSES[kind]
    assert cls.kind == kind
    assert cls.needs_features == (kind == "readout")
    assert cls.uses_unet_sigma_embedding == (kind != "preserve")


@pytest.mark.parametrize(
    "kind, kwargs",
    [
        ("cnn", {}),
        ("readout", {"mask_channel": True}),
        ("preserve", {}),
        ("cnn", {"latent_channels": 16, "sigma_conditioned": False}),
    ],
)
def test_save_pretrained_round_trip(kind, kwargs, tmp_path):
    op = make(kind, **kwargs)
    op.save_pretrained(tmp_path / "op")
    assert (tmp_path / "op" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = load_operator(tmp_path / "op")
    assert type(loaded) is type(op) and not loaded.training

    def public(cfg) -> str:  # tuples come back as lists
        return json.dumps({k: v for k, v in cfg.items() if not k.startswith("_")}, sort_keys=True)

    assert public(loaded.config) == public(op.config)
    own = loaded.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in op.state_dict().items())
    assert torch.allclose(call(loaded, 16, 16), call(op, 16, 16), rtol=0, atol=1e-6)
    again = type(op).from_pretrained(tmp_path / "op")
    assert torch.allclose(call(again, 16, 16), call(op, 16, 16), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "kind, kwargs", [("cnn", {}), ("readout", {}), ("readout", {"mask_channel": True}), ("preserve", {})]
)
@pytest.mark.parametrize("size", [(64, 64), (32, 32), (40, 24), (9, 13)])
def test_any_latent_size(kind, kwargs, size):
    out = call(make(kind, **kwargs), *size)
    assert out.shape == (1, 4, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kind, kwargs", [("cnn", {}), ("readout", {"mask_channel": True}), ("preserve", {})])
def test_batch_equals_single(kind, kwargs):
    op = make(kind, **kwargs)
    batch = call(op, 24, 16, batch=3)
    g = torch.Generator().manual_seed(1)
    # rebuild the same per-image inputs one at a time
    emb = torch.randn(3, EMB, generator=g)
    with torch.no_grad():
        if kind == "cnn":
            z = torch.randn(3, 4, 24, 16, generator=g)
            singles = [op(z[i : i + 1], emb[i : i + 1]) for i in range(3)]
        elif kind == "preserve":
            z = torch.randn(3, 4, 24, 16, generator=g)
            levels = torch.linspace(0.0, 0.04, 3)
            singles = [op(z[i : i + 1], noise_level=levels[i : i + 1]) for i in range(3)]
        else:
            feats = [torch.randn(3, c, 24 // s, 16 // s, generator=g) for c, s in zip(FEATS, (4, 2, 1))]
            mask = torch.ones(3, 1, 192, 128)
            mask[..., :96, :64] = 0
            singles = [
                op([f[i : i + 1] for f in feats], emb[i : i + 1], mask=mask[i : i + 1], size=(24, 16)) for i in range(3)
            ]
    assert torch.allclose(batch, torch.cat(singles), atol=1e-5)


def test_layernorm_is_exact_at_reference_size_and_resizes_elsewhere():
    norm = ResizableLayerNorm(3, 8)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 3, 8, 8)
    ref = torch.nn.functional.layer_norm(x, (3, 8, 8), norm.weight, norm.bias)
    assert torch.equal(norm(x), ref)
    y = norm(torch.randn(2, 3, 5, 12))
    assert y.shape == (2, 3, 5, 12) and torch.isfinite(y).all()


def test_missing_conditioning_inputs_are_clear_errors():
    with pytest.raises(SiloError, match="sigma-conditioned"):
        make("cnn")(torch.randn(1, 4, 8, 8), None)
    with pytest.raises(SiloError, match="noise_level"):
        make("preserve")(torch.randn(1, 4, 8, 8))
    readout = make("readout", mask_channel=True)
    feats = [torch.randn(1, c, 8, 8) for c in FEATS]
    with pytest.raises(SiloError, match="mask"):
        readout(feats, torch.randn(1, EMB))
    with pytest.raises(SiloError, match=r"channels \[64, 64, 32\], got \[64, 32\]"):
        readout(feats[1:], torch.randn(1, EMB))


def test_unconditioned_operators_take_no_embedding():
    z = torch.randn(1, 4, 8, 8)
    assert CNNOperator(sigma_conditioned=False)(z, None).shape == z.shape
    readout = small_readout(sigma_conditioned=False)
    assert readout([torch.randn(1, c, 8, 8) for c in FEATS], None).shape == z.shape


def tiny_unet2d():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )


def tiny_unet2d_condition():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=16,
        attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )


def run_unet(unet, z):
    if hasattr(unet.config, "cross_attention_dim"):
        return unet(z, 10, encoder_hidden_states=torch.zeros(z.shape[0], 3, 16)).sample
    return unet(z, 10).sample


def no_hooks_left(unet) -> bool:
    return all(not m._forward_hooks for m in unet.modules())


@pytest.mark.parametrize("build", [tiny_unet2d, tiny_unet2d_condition])
def test_feature_hooks_collect_up_block_resnets(build):
    unet = build()
    channels = feature_channels(unet)
    assert channels == [32, 32, 16, 16]
    z = torch.randn(2, 4, 16, 16)
    with UNetFeatureHooks(unet) as hooks:
        run_unet(unet, z)
        assert [f.shape[1] for f in hooks.features] == channels
        assert all(f.shape[0] == 2 for f in hooks.features)
        hooks.clear()
        run_unet(unet, z)
        assert len(hooks.features) == len(channels)  # cleared, then one pass's worth
    assert no_hooks_left(unet)
    run_unet(unet, z)
    assert len(hooks.features) == len(channels)  # nothing collected after exit


def test_feature_hooks_removed_on_error():
    unet = tiny_unet2d()
    with pytest.raises(RuntimeError), UNetFeatureHooks(unet):
        raise RuntimeError("boom")
    assert no_hooks_left(unet)


def test_readout_on_hooked_unet_features_backpropagates_to_latent():
    unet = tiny_unet2d_condition()
    emb_dim = unet.time_embedding.linear_2.out_features
    op = ReadoutOperator(
        embedding_dim=emb_dim,
        feature_channels=feature_channels(unet),
        bottleneck_channels=32,
        projection_dim=64,
        head_channels=(32, 16),
    )
    check_compatible(op, 4, emb_dim, feature_channels(unet))
    z = torch.randn(1, 4, 16, 16, requires_grad=True)
    with UNetFeatureHooks(unet) as hooks:
        run_unet(unet, z)
        out = op(hooks.features, torch.randn(1, emb_dim), size=(16, 16))
    assert out.shape == (1, 4, 16, 16)
    (grad,) = torch.autograd.grad(out.square().sum(), z)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_check_compatible_names_both_sides():
    check_compatible(make("cnn"), 4, EMB, None)
    with pytest.raises(SiloError, match="4-channel latents but the prior's VAE has 16"):
        check_compatible(make("cnn"), 16, EMB, None)
    with pytest.raises(SiloError, match="32-d noise-level embedding but the prior UNet's time embedding is 1280-d"):
        check_compatible(make("readout"), 4, 1280, FEATS)
    with pytest.raises(SiloError, match=r"channels \[64, 64, 32\] but the prior UNet gives \[320, 320\]"):
        check_compatible(make("readout"), 4, EMB, [320, 320])
    check_compatible(make("preserve"), 4, 1280, None)  # own noise embedding: any UNet width is fine
    with pytest.raises(SiloError, match="16"):
        check_compatible(make("preserve"), 16, 1280, None)


def test_load_operator_errors_name_the_path(tmp_path):
    with pytest.raises(SiloError, match=f"{tmp_path / 'absent'} does not exist"):
        load_operator(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SiloError, match="has no config.json"):
        load_operator(empty)
    make("cnn").save_pretrained(tmp_path / "op")
    (tmp_path / "op" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(SiloError, match="has no weights file"):
        load_operator(tmp_path / "op")
    config = tmp_path / "op" / "config.json"
    config.write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(SiloError, match="unknown _class_name 'UNet2DModel'"):
        load_operator(tmp_path / "op")
    config.write_text("{not json")
    with pytest.raises(SiloError, match="not valid JSON"):
        load_operator(config)


def test_load_operator_device_and_dtype(tmp_path):
    make("preserve").save_pretrained(tmp_path / "op")
    op = load_operator(tmp_path / "op", device="cpu", dtype=torch.float64)
    assert op.dtype == torch.float64 and op.pos_embedding.positional_embedding.dtype == torch.float64
    assert call(op.float(), 8, 8).dtype == torch.float32


def test_residual_cnn_adds_its_input():
    """``residual=True`` predicts ``z0 + net(z0)`` with the same parameters, and the flag survives a save."""
    plain, residual = make("cnn"), CNNOperator(embedding_dim=EMB, residual=True).eval()
    residual.load_state_dict(plain.state_dict())
    g = torch.Generator().manual_seed(3)
    z, emb = torch.randn(2, 4, 12, 16, generator=g), torch.randn(2, EMB, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(residual(z, emb), z + plain(z, emb))
    assert CNNOperator().config.residual is False, "the published layout stays the default"


def test_residual_flag_round_trips(tmp_path):
    op = CNNOperator(embedding_dim=EMB, residual=True)
    op.save_pretrained(str(tmp_path / "op"))
    assert load_operator(tmp_path / "op").config.residual is True


# -- kernel-aware CNN operators (blur kernels that change per image) ----------------------------------
def test_pool_kernel_keeps_the_centre_and_the_mass():
    from silo.operators.latent_blur import pool_kernel

    delta = torch.zeros(61, 61)
    delta[30, 30] = 1
    lk = pool_kernel(delta, 4)
    assert lk.shape == (17, 17) and lk[8, 8] == 1 and lk.sum() == 1  # 61 px -> 17 latent px, centre kept
    k = torch.rand(3, 9, 9)
    k = k / k.sum((1, 2), keepdim=True)
    lk = pool_kernel(k, 2)
    assert lk.shape == (3, 5, 5)
    torch.testing.assert_close(lk.sum((1, 2)), torch.ones(3))
    assert pool_kernel(torch.rand(8, 8), 4).shape == (3, 3), "an even number of blocks is widened to stay centred"
    with pytest.raises(SiloError, match="scale"):
        pool_kernel(delta, 0)


def test_latent_blur_identity_shift_and_per_image_kernels():
    from silo.operators.latent_blur import latent_blur

    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 10, 12, generator=g)
    delta = torch.zeros(13, 13)
    delta[6, 6] = 1
    torch.testing.assert_close(latent_blur(z, delta, 4), z)
    shifted = torch.zeros(13, 13)
    shifted[6, 10] = 1  # 4 px right = one latent position
    out = latent_blur(z, shifted, 4)
    torch.testing.assert_close(out[..., 1:], z[..., :-1])  # convolution: the image moves right
    kernels = torch.rand(2, 13, 13, generator=g)
    kernels = kernels / kernels.sum((1, 2), keepdim=True)
    both = latent_blur(z, kernels, 4)
    for i in range(2):
        torch.testing.assert_close(both[i : i + 1], latent_blur(z[i : i + 1], kernels[i], 4))
    tiny = latent_blur(torch.randn(1, 3, 2, 2, generator=g), torch.rand(61, 61), 4)  # too small to reflect
    assert tiny.shape == (1, 3, 2, 2) and torch.isfinite(tiny).all()


def test_kernel_aware_cnn_starts_from_the_latent_blur_and_round_trips(tmp_path):
    from silo.operators.latent_blur import latent_blur

    op = CNNOperator(embedding_dim=EMB, residual=True, blur_kernel_scale=4).eval()
    assert op.needs_blur_kernel and not CNNOperator().needs_blur_kernel
    g = torch.Generator().manual_seed(1)
    z, emb = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, EMB, generator=g)
    kernel = torch.rand(2, 21, 21, generator=g)
    kernel = kernel / kernel.sum((1, 2), keepdim=True)
    with pytest.raises(SiloError, match="kernel-aware"):
        op(z, emb)
    with torch.no_grad():
        last = op.processing[-1]
        last.weight.zero_()
        last.bias.zero_()
        torch.testing.assert_close(op(z, emb, kernel=kernel), latent_blur(z, kernel, 4))
        for p in op.parameters():
            p.add_(0.05 * torch.randn_like(p))
        before = op(z, emb, kernel=kernel)
        assert not torch.allclose(before, op(z, emb, kernel=kernel.flip(-1))), "the output depends on the kernel"
    op.save_pretrained(str(tmp_path / "op"))
    loaded = load_operator(tmp_path / "op")
    assert loaded.config.blur_kernel_scale == 4
    with torch.no_grad():
        torch.testing.assert_close(loaded(z, emb, kernel=kernel), before)
    check_compatible(loaded, 4, EMB, vae_scale=4)
    with pytest.raises(SiloError, match="pools blur kernels by 4 but the prior's VAE down-samples by 8"):
        check_compatible(loaded, 4, EMB, vae_scale=8)


def test_latent_blur_follows_the_pixel_blur_on_the_latent_grid():
    """Block-averaging commutes with blurring to within the kernel's sub-block detail: pooling the pixel blur
    matches the latent blur of the pooled image far better than with the kernel flipped or transposed."""
    import torch.nn.functional as F

    from silo.degradations.blur import blur, motion_kernel
    from silo.operators.latent_blur import latent_blur

    g = torch.Generator().manual_seed(0)
    x = F.interpolate(torch.randn(1, 3, 32, 32, generator=g), size=(128, 128), mode="bilinear", align_corners=False)
    for seed in (1, 2, 3):
        k = motion_kernel(61, 0.5, torch.Generator().manual_seed(seed))
        target = F.avg_pool2d(blur(x, k), 4)
        pooled = F.avg_pool2d(x, 4)

        def err(kernel, pooled=pooled, target=target):
            return float((latent_blur(pooled, kernel, 4) - target).norm() / target.norm())

        assert err(k) < 0.7 * min(err(k.flip(-1, -2)), err(k.t())), seed  # measured: 0.20-0.25 vs 0.32-0.56


def test_apply_keeps_the_samplers_error_lines():
    """Through ``apply`` a missing input the operator reads is the same one-line error the samplers gave."""
    from silo.operators import OperatorInputs

    z = torch.randn(1, 4, 8, 8)
    aware = CNNOperator(embedding_dim=EMB, blur_kernel_scale=4).eval()
    with pytest.raises(
        SiloError,
        match=r"^CNNOperator is kernel-aware, but this problem has no blur kernel \(a blur "
        r"task with --kernel, or a seeded random kernel\)$",
    ):
        aware.apply(OperatorInputs(z0=z, noise_sigma=0.01), None)
    readout = make("readout", mask_channel=True)
    feats = [torch.randn(1, c, 8, 8) for c in FEATS]
    with pytest.raises(SiloError, match="has a mask channel"):
        readout.apply(OperatorInputs(features=feats, noise_sigma=0.01, latent_size=(8, 8)), None)
    with pytest.raises(SiloError, match="sigma-conditioned: pass the prior"):
        make("cnn").apply(OperatorInputs(z0=z, noise_sigma=0.01), None)
    out = make("preserve").apply(OperatorInputs(z0=z, noise_sigma=0.01), None)  # its own noise embedding
    with torch.no_grad():
        assert torch.equal(out.detach(), make("preserve")(z, noise_level=torch.tensor([0.02])))
