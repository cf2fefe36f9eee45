"""Prior loading: diffusers folders (conditional and not), offline Hub ids, single files, dtypes."""

import pytest
import torch

from silo.errors import SiloError
from silo.priors import Prior
from silo.testing import random_images, tiny_prior


@pytest.mark.parametrize("conditional", [False, True])
def test_save_and_load_a_local_diffusers_folder(tmp_path, conditional):
    prior = tiny_prior(conditional=conditional)
    prior.save_pretrained(tmp_path / "p")
    loaded = Prior.from_pretrained(tmp_path / "p")
    assert type(loaded.unet) is type(prior.unet)
    assert loaded.is_conditional == conditional
    x = random_images(1, (32, 32))
    torch.testing.assert_close(loaded.encode(x, sample=False), prior.encode(x, sample=False))
    z = prior.encode(x, sample=False)
    ctx = loaded.encode_prompt("a photo", 1).cond
    ctx_ref = prior.encode_prompt("a photo", 1).cond
    if conditional:
        torch.testing.assert_close(ctx, ctx_ref)
    torch.testing.assert_close(loaded.denoise(z, 10, ctx), prior.denoise(z, 10, ctx_ref))
    assert loaded.describe()["embedding_dim"] == prior.embedding_dim


def test_restore_with_a_text_conditioned_prior_and_prompt(tmp_path):
    import numpy as np
    from PIL import Image

    from silo.cli import main
    from silo.operators import CNNOperator

    prior = tiny_prior(conditional=True)
    prior.save_pretrained(tmp_path / "p")
    CNNOperator(
        latent_channels=4, embedding_dim=prior.embedding_dim, channels=(8, 8, 8, 8), norm_size=8
    ).save_pretrained(tmp_path / "op")
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / "x.png")
    rc = main(
        [
            "restore",
            str(tmp_path / "x.png"),
            "--simulate",
            "--task",
            "sr4",
            "--prior",
            str(tmp_path / "p"),
            "--operator",
            str(tmp_path / "op"),
            "--steps",
            "2",
            "--prompt",
            "a face",
            "--guidance-scale",
            "2",
            "--cfg-fix",
            "--no-progress",
            "--output-dir",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 0
    assert len(list((tmp_path / "o").glob("x_sr4_silo_s1000_*.json"))) == 1


def test_offline_hub_id_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(SiloError, match=r"prior someone/not-cached: cannot load unet config \(offline"):
        Prior.from_pretrained("someone/not-cached")


def test_incomplete_folder_names_what_is_missing(tmp_path):
    prior = tiny_prior()
    prior.save_pretrained(tmp_path / "p")
    import shutil

    shutil.rmtree(tmp_path / "p" / "scheduler")
    with pytest.raises(SiloError, match="lacks scheduler/"):
        Prior.from_pretrained(tmp_path / "p")


def test_single_file_checkpoint_errors_are_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SiloError, match="cannot load single-file checkpoint"):
        Prior.from_pretrained(bad)
    other = tmp_path / "model.bin"
    other.write_bytes(b"x")
    with pytest.raises(SiloError, match="must be .safetensors or .ckpt"):
        Prior.from_pretrained(other)


def test_bfloat16_prior_samples_finite(tmp_path):
    prior = tiny_prior()
    prior.save_pretrained(tmp_path / "p")
    low = Prior.from_pretrained(tmp_path / "p", dtype=torch.bfloat16)
    assert next(low.unet.parameters()).dtype == torch.bfloat16
    z = low.encode(random_images(1, (32, 32)))
    assert torch.isfinite(low.decode(z).float()).all()
    assert low.sigma_embedding(0.01, 2).shape == (2, prior.embedding_dim)


def test_sigma_embedding_uses_the_reference_pseudo_timestep():
    prior = tiny_prior()
    # sigma 0.01 on [0, 1] = 0.02 on [-1, 1] -> t = 0.02 / 0.1 * 999
    torch.testing.assert_close(prior.sigma_embedding(0.01), prior.time_embedding(torch.tensor([0.2 * 999])))
