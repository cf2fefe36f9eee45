"""The published operator formats load into our classes and reproduce the published code's outputs.

Each state dict is built by a fixed recipe (seeded from the key name), saved in its published container
and loaded through our loader; the outputs must equal the golden ones computed with the published code.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from silo.cli import main as cli_main  # noqa: E402
from silo.errors import SiloError  # noqa: E402
from silo.operators import load_operator  # noqa: E402
from silo.operators.published import convert_published, load_published_operator  # noqa: E402

REFERENCE = Path(__file__).resolve().parent / "data" / "published"  # scripts/make_test_data.py --reference
KEYS_FILE = REFERENCE / "silo-checkpoint-keys.json"
GOLDEN_FILE = REFERENCE / "silo-checkpoint-golden.safetensors"
FEATURE_CHANNELS = [1280] * 6 + [640] * 3 + [320] * 3
EXPECTED_KIND = {
    "cnn_sigma_layernorm": "cnn",
    "rg_sigma": "readout",
    "rg_sigma_condinpaint": "readout",
    "preserve_ldn": "preserve",
}


def recipe_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The recipe: each tensor ``0.05 * randn`` seeded by the CRC32 of its key."""
    shapes = json.loads(KEYS_FILE.read_text())[name]
    return {
        key: 0.05 * torch.randn(shape, generator=torch.Generator().manual_seed(zlib.crc32(key.encode())))
        for key, shape in shapes.items()
    }


def save_published(name: str, folder: Path, state: dict | None = None) -> Path:
    """Save in the published container: readout files wrap the state dict as ``aggregation_network``."""
    state = recipe_state_dict(name) if state is None else state
    path = folder / f"{name}.pt"
    torch.save({"aggregation_network": state} if name.startswith("rg_") else state, path)
    return path


def golden_inputs() -> dict:
    g = torch.Generator().manual_seed(1234)
    z = torch.randn(1, 4, 64, 64, generator=g)
    sigma_emb = torch.randn(1, 1280, generator=g)
    feats = torch.randn(1, 10560, 64, 64, generator=torch.Generator().manual_seed(1235))
    mask = torch.ones(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 0
    return {"z": z, "sigma_emb": sigma_emb, "features": list(feats.split(FEATURE_CHANNELS, 1)), "mask": mask}


def run_operator(operator, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        if operator.kind == "cnn":
            return operator(inputs["z"], inputs["sigma_emb"])
        if operator.kind == "preserve":
            return operator(inputs["z"], noise_level=torch.tensor([0.02]))
        mask = inputs["mask"] if operator.config.mask_channel else None
        return operator(inputs["features"], inputs["sigma_emb"], mask=mask)


@pytest.mark.parametrize("name", list(EXPECTED_KIND))
def test_published_format_reproduces_golden_output(name, tmp_path):
    from safetensors.torch import load_file

    operator = load_published_operator(save_published(name, tmp_path))
    assert operator.kind == EXPECTED_KIND[name]
    if operator.kind == "readout":
        assert operator.config.mask_channel == (name == "rg_sigma_condinpaint")
    out = run_operator(operator, golden_inputs())
    golden = load_file(str(GOLDEN_FILE))[f"{name}.output"]
    assert out.shape == golden.shape
    assert (out - golden).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", ["cnn_sigma_layernorm", "preserve_ldn"])
def test_convert_checkpoint_round_trip(name, tmp_path):
    src = save_published(name, tmp_path)
    dst = tmp_path / "converted"
    assert cli_main(["convert-checkpoint", str(src), str(dst)]) == 0
    assert (dst / "config.json").is_file() and (dst / "diffusion_pytorch_model.safetensors").is_file()
    inputs = golden_inputs()
    expected = run_operator(load_published_operator(src), inputs)
    converted = load_operator(dst)
    assert converted.kind == EXPECTED_KIND[name]
    # same weights; CPU kernels may round differently on differently allocated tensors
    assert torch.allclose(run_operator(converted, inputs), expected, rtol=0, atol=1e-6)


def test_convert_readout_with_mask_keeps_weights_and_config(tmp_path):
    src = save_published("rg_sigma_condinpaint", tmp_path)
    dst = tmp_path / "converted"
    original = convert_published(src, dst, kind="readout")
    loaded = load_operator(dst)
    assert loaded.config.mask_channel is True
    assert list(loaded.config.feature_channels) == FEATURE_CHANNELS
    own = loaded.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in original.state_dict().items())


def test_convert_refuses_to_overwrite(tmp_path, capsys):
    src = save_published("cnn_sigma_layernorm", tmp_path)
    dst = tmp_path / "exists"
    dst.mkdir()
    assert cli_main(["convert-checkpoint", str(src), str(dst)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert list(dst.iterdir()) == []


def test_kind_mismatch_is_refused(tmp_path):
    src = save_published("cnn_sigma_layernorm", tmp_path)
    with pytest.raises(SiloError, match="holds a cnn operator, not readout"):
        load_published_operator(src, kind="readout")


def test_convert_checkpoint_operator_kind_comes_from_the_registry(tmp_path, capsys):
    """--operator-kind takes the kinds of OPERATOR_CLASSES (listed in the help); a file of another kind is refused."""
    from silo.cli import build_parser
    from silo.operators import OPERATOR_CLASSES

    src = save_published("cnn_sigma_layernorm", tmp_path)
    assert cli_main(["convert-checkpoint", str(src), str(tmp_path / "a"), "--operator-kind", "readout"]) == 2
    assert "holds a cnn operator, not readout" in capsys.readouterr().err
    assert cli_main(["convert-checkpoint", str(src), str(tmp_path / "b"), "--operator-kind", "cnn"]) == 0
    assert load_operator(tmp_path / "b").kind == "cnn"
    with pytest.raises(SystemExit):
        cli_main(["convert-checkpoint", str(src), str(tmp_path / "c"), "--operator-kind", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    sub = build_parser()._subparsers._group_actions[0].choices["convert-checkpoint"]
    assert f"one of {', '.join(OPERATOR_CLASSES)};" in " ".join(sub.format_help().split())


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = recipe_state_dict("preserve_ldn")
    del state["blocks.1.norm2.bias"]
    state["blocks.1.extra.weight"] = torch.zeros(3)
    named = r"missing keys blocks\.1\.norm2\.bias.*unexpected keys blocks\.1\.extra\.weight"
    with pytest.raises(SiloError, match=named):
        load_published_operator(save_published("preserve_ldn", tmp_path, state))


def test_shape_mismatch_is_named(tmp_path):
    state = recipe_state_dict("cnn_sigma_layernorm")
    state["processing.0.bias"] = torch.zeros(15)
    with pytest.raises(SiloError, match=r"processing\.0\.bias \(15,\) vs \(16,\)"):
        load_published_operator(save_published("cnn_sigma_layernorm", tmp_path, state))


class _NotATensor:
    pass


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a checkpoint at all", "cannot read operator checkpoint"),
        ({"weight": torch.zeros(2)}, "not a published SILO operator"),
        ({"aggregation_network": [1, 2]}, "holds no state dict"),
        (_NotATensor(), "cannot read operator checkpoint"),  # refused by weights_only unpickling
    ],
)
def test_bad_checkpoint_files(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(SiloError, match=message) as info:
        load_published_operator(path)
    assert str(path) in str(info.value)


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(SiloError, match="does not exist"):
        load_published_operator(tmp_path / "nope.pt")
