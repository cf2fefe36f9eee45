"""silo-tiny data set and prior training: manifest checks, loss goes down, resume is exact, export loads."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from silo.data import photos
from silo.errors import SiloError
from silo.training.prior import TrainConfig, latest_checkpoint, train

TINY_VAE = {"widths": [8, 16, 16], "latent_channels": 4}
TINY_UNET = {"widths": [16, 32], "layers": 1}


def skimage_manifest(tmp_path, **change) -> dict:
    manifest = photos.load_manifest()
    manifest["photos"] = [p for p in manifest["photos"] if p["source"] == photos.SKIMAGE][:4]
    manifest["photos"][0].update(change)
    return manifest


def test_manifest_lists_licences_checksums_and_heldout():
    manifest = photos.load_manifest()
    names = [p["name"] for p in manifest["photos"]]
    assert len(names) == len(set(names)) >= 30
    assert "astronaut" in photos.heldout_names(manifest)
    assert 4 <= len(photos.heldout_names(manifest)) <= 8
    for p in manifest["photos"]:
        assert p["licence"] and len(p["sha256"]) == 64 and p["width"] > 0 and p["package_version"]
        assert p["source"] in photos.INSTALL_HINT


def test_build_data_writes_scales_and_keeps_heldout_apart(tmp_path):
    manifest = skimage_manifest(tmp_path)
    out = photos.build_dataset(tmp_path / "data", manifest, progress=False)
    dataset = json.loads((out / photos.DATASET_FILE).read_text())
    train_files = [f for f in dataset["files"] if f["split"] == "train"]
    assert {f["scale"] for f in train_files} == {1, 2, 4}
    assert all(f["name"] not in dataset["heldout"] for f in train_files)
    assert (out / "heldout" / "astronaut_x1.png").is_file()
    images = photos.load_training_images(out)
    assert len(images) == len(train_files) and all(im.dtype == np.uint8 for im in images)
    again = photos.build_dataset(tmp_path / "data", manifest, progress=False)  # idempotent
    assert json.loads((again / photos.DATASET_FILE).read_text()) == dataset


def test_patches_are_deterministic_training_crops_and_refuse_other_settings(tmp_path):
    from PIL import Image

    out = photos.build_dataset(tmp_path / "data", skimage_manifest(tmp_path), progress=False)
    folder = photos.write_patches(out, 6, size=32, seed=3, progress=False)
    first = [np.asarray(Image.open(folder / f"{i:06d}.png")) for i in range(6)]
    assert all(p.shape == (32, 32, 3) for p in first) and len({p.tobytes() for p in first}) == 6
    (folder / "000002.png").unlink()  # an interrupted run: the missing patch is redrawn identically
    photos.write_patches(out, 6, size=32, seed=3, progress=False)
    assert np.array_equal(np.asarray(Image.open(folder / "000002.png")), first[2])
    with pytest.raises(SiloError, match="seed 3 \\(asked 4\\)"):
        photos.write_patches(out, 6, size=32, seed=4, progress=False)


def test_build_data_rejects_changed_file_and_missing_package(tmp_path):
    with pytest.raises(SiloError, match="checksum"):
        photos.build_dataset(tmp_path / "a", skimage_manifest(tmp_path, sha256="0" * 64), progress=False)
    manifest = skimage_manifest(tmp_path)
    manifest["photos"].append(
        dict(name="x", source="mate-backgrounds", file="/nonexistent/x.jpg", licence="GPL-2+", split="train")
    )
    with pytest.raises(SiloError, match="apt-get install mate-backgrounds"):
        photos.build_dataset(tmp_path / "b", manifest, progress=False)


def test_example_is_a_unit_range_square():
    x = photos.load_example("astronaut")
    assert x.shape == (1, 3, 256, 256) and -1 <= x.min() < x.max() <= 1
    with pytest.raises(SiloError):
        photos.load_example("nope")


def fake_images(n: int = 3, size: int = 96) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] / size
    out = []
    for i in range(n):
        base = np.stack([np.sin(6 * xx + i), np.cos(5 * yy - i), np.sin(4 * (xx + yy))], -1)
        out.append(((base * 0.4 + 0.5 + 0.05 * rng.standard_normal(base.shape)).clip(0, 1) * 255).astype(np.uint8))
    return out


def fake_crops(n: int = 4, size: int = 64) -> np.ndarray:
    return np.stack([im[:size, :size] for im in fake_images(n, max(96, size))])


def config(tmp_path, stage: str, steps: int, **kw) -> TrainConfig:
    base = dict(
        stage=stage,
        data=str(tmp_path),
        output=str(tmp_path / stage),
        max_steps=steps,
        batch_size=4,
        lr=3e-3,
        warmup=2,
        crop=32,
        threads=1,
        checkpoint_every=3,
        eval_every=3,
        progress=False,
        model=dict(TINY_VAE if stage == "vae" else TINY_UNET),
    )
    base.update(kw)
    return TrainConfig(**base)


def fixed_batch_loss(stage, model, batch) -> float:
    torch.manual_seed(0)
    with torch.no_grad():
        return float(stage.loss(model, batch)[0])


def test_vae_steps_reduce_loss_on_fixed_batch(tmp_path):
    from silo.training.prior import VaeStage

    torch.manual_seed(0)
    images, crops = fake_images(), fake_crops()
    cfg = config(tmp_path, "vae", 12)
    stage = VaeStage(cfg, images, crops)
    batch = stage.sampler.sample(4)
    opt = torch.optim.Adam(stage.model.parameters(), 3e-3)
    before = fixed_batch_loss(stage, stage.model, batch)
    for _ in range(12):
        loss, _ = stage.loss(stage.model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert fixed_batch_loss(stage, stage.model, batch) < 0.85 * before


def test_resume_continues_with_identical_state(tmp_path):
    images, crops = fake_images(), fake_crops()
    full = config(tmp_path, "vae", 6, output=str(tmp_path / "full"))
    train(full, images=images, eval_crops=crops)
    half = config(tmp_path, "vae", 6, output=str(tmp_path / "half"), stop_at=3)
    train(half, images=images, eval_crops=crops)
    # interrupted at step 3 (same LR horizon), then resumed
    resumed = config(tmp_path, "vae", 6, output=str(tmp_path / "half"))
    first = latest_checkpoint(resumed.output)
    assert first.name == "step-0000003"
    train(resumed, resume="latest", images=images, eval_crops=crops)
    a, b = latest_checkpoint(full.output), latest_checkpoint(resumed.output)
    assert a.name == b.name == "step-0000006"
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    oa = torch.load(a / "optimizer.bin", weights_only=True)["state"]
    ob = torch.load(b / "optimizer.bin", weights_only=True)["state"]
    for k in oa:
        assert oa[k]["step"] == ob[k]["step"]
        torch.testing.assert_close(oa[k]["exp_avg"], ob[k]["exp_avg"], rtol=1e-5, atol=1e-7)
    log = [json.loads(line) for line in (tmp_path / "half" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3, 6]


def test_unet_stage_trains_and_export_loads(tmp_path, monkeypatch):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel

    from silo.training import prior_export
    from silo.training.prior import UnetStage

    images, crops = fake_images(), fake_crops()
    vae_cfg = config(tmp_path, "vae", 3)
    train(vae_cfg, images=images, eval_crops=crops)
    monkeypatch.setattr(photos, "load_training_images", lambda _: images)
    monkeypatch.setattr(photos, "heldout_crops", lambda n, size, seed=0: crops)
    prior_dir = tmp_path / "prior"
    prior_export.export(vae_cfg, prior_dir)
    vae = AutoencoderKL.from_pretrained(prior_dir / "vae", torch_dtype=torch.float32)
    assert vae.config.scaling_factor != 1.0

    unet_cfg = config(tmp_path, "unet", 6, vae=str(prior_dir / "vae"), lr=2e-3)
    torch.manual_seed(0)
    stage = UnetStage(unet_cfg, images, crops[:, :32, :32])
    batch = stage.sampler.sample(4)
    before = fixed_batch_loss(stage, stage.model, batch)
    opt = torch.optim.Adam(stage.model.parameters(), 2e-3)
    for _ in range(10):
        torch.manual_seed(0)
        loss, _ = stage.loss(stage.model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert fixed_batch_loss(stage, stage.model, batch) < before

    train(unet_cfg, images=images, eval_crops=crops[:, :32, :32])
    prior_export.export(unet_cfg, prior_dir)
    unet = UNet2DModel.from_pretrained(prior_dir / "unet", torch_dtype=torch.float32)
    scheduler = DDPMScheduler.from_pretrained(prior_dir / "scheduler")
    assert scheduler.config.prediction_type == "v_prediction"
    z = torch.randn(1, vae.config.latent_channels, 12, 20)  # any size, not only the training crop
    assert unet(z, 10).sample.shape == z.shape
    card = json.loads((prior_dir / "silo_prior.json").read_text())
    assert {"vae", "unet", "scheduler"} <= set(card)

    # fine-tune from the export: the model starts from the exported weights, a time limit stops the run
    # with a checkpoint, and the new card keeps the history of the weights it started from
    from silo.training.prior import init_weights

    fresh = UnetStage(config(tmp_path, "unet", 1, vae=str(prior_dir / "vae")), images, crops[:, :32, :32]).model
    init_weights(fresh, prior_dir, "unet")
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(v, unet.state_dict()[k].float())
    tuned = config(
        tmp_path,
        "unet",
        1000,
        vae=str(prior_dir / "vae"),
        output=str(tmp_path / "tuned"),
        init_from=str(prior_dir),
        time_limit=0.0,
    )
    record = train(tuned, images=images, eval_crops=crops[:, :32, :32])
    assert record["step"] == 1  # the time limit stopped it after one step, with a checkpoint to resume
    assert latest_checkpoint(tuned.output).name == "step-0000001"
    prior_export.export(tuned, tmp_path / "tuned-prior")
    card = json.loads((tmp_path / "tuned-prior" / "silo_prior.json").read_text())
    assert card["unet"]["step"] == 1 and card["unet"]["finetuned_from"]["step"] == 6


def test_init_from_refuses_another_architecture(tmp_path):
    from silo.priors import tiny
    from silo.training.prior import init_weights

    small = tiny.build_unet(latent_channels=4, sample_size=8, **TINY_UNET)
    (tmp_path / "unet").mkdir()
    small.save_pretrained(tmp_path / "unet", safe_serialization=True)
    other = tiny.build_unet(latent_channels=8, sample_size=8, **TINY_UNET)
    with pytest.raises(SiloError, match="does not match"):
        init_weights(other, tmp_path, "unet")
    with pytest.raises(SiloError, match="no vae"):
        init_weights(other, tmp_path, "vae")


def test_decoder_finetune_keeps_the_latent_space(tmp_path, monkeypatch):
    from diffusers import AutoencoderKL

    from silo.training import prior_export

    images, crops = fake_images(), fake_crops()
    monkeypatch.setattr(photos, "load_training_images", lambda _: images)
    monkeypatch.setattr(photos, "heldout_crops", lambda n, size, seed=0: crops)
    base = config(tmp_path, "vae", 3)
    train(base, images=images, eval_crops=crops)
    prior_export.export(base, tmp_path / "prior")
    with pytest.raises(SiloError, match="--init-from"):
        train(
            config(tmp_path, "vae", 2, output=str(tmp_path / "x"), freeze_encoder=True), images=images, eval_crops=crops
        )
    tuned = config(
        tmp_path,
        "vae",
        3,
        output=str(tmp_path / "dec"),
        init_from=str(tmp_path / "prior"),
        freeze_encoder=True,
        lr=1e-2,
        loss="mse",
    )
    record = train(tuned, images=images, eval_crops=crops)
    assert "train_mse" in record and "train_l1" not in record  # the loss asked for is the one optimised
    prior_export.export(tuned, tmp_path / "prior-dec")
    old = AutoencoderKL.from_pretrained(tmp_path / "prior" / "vae", torch_dtype=torch.float32)
    new = AutoencoderKL.from_pretrained(tmp_path / "prior-dec" / "vae", torch_dtype=torch.float32)
    assert new.config.scaling_factor == old.config.scaling_factor
    for name in ("encoder", "quant_conv"):
        for (k, a), b in zip(getattr(old, name).state_dict().items(), getattr(new, name).state_dict().values()):
            torch.testing.assert_close(a, b, msg=f"{name}.{k} changed")
    assert any(
        not torch.equal(a, b) for a, b in zip(old.decoder.state_dict().values(), new.decoder.state_dict().values())
    )
    card = json.loads((tmp_path / "prior-dec" / "silo_prior.json").read_text())["vae"]
    assert card["finetuned_from"]["step"] == 3 and "encoder" in card["frozen"]


def test_resumed_run_keeps_its_fine_tuning_flags(tmp_path):
    from silo.cli import build_parser
    from silo.cli.train_prior import run

    ckpt = tmp_path / "run" / "checkpoints" / "step-0000001"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 1, "config": {"model": {}}}))
    args = build_parser().parse_args(
        [
            "train-prior",
            "--stage",
            "vae",
            "--data",
            str(tmp_path),
            "--output-dir",
            str(tmp_path / "run"),
            "--resume-from-checkpoint",
            "latest",
            "--freeze-encoder",
            "--init-from",
            str(tmp_path),
        ]
    )
    with pytest.raises(SiloError, match="without --freeze-encoder"):
        run(args)
    args = build_parser().parse_args(
        [
            "train-prior",
            "--stage",
            "vae",
            "--data",
            str(tmp_path),
            "--output-dir",
            str(tmp_path / "run"),
            "--resume-from-checkpoint",
            "latest",
            "--loss",
            "mse",
        ]
    )
    with pytest.raises(SiloError, match="--loss l1"):
        run(args)
    args = build_parser().parse_args(
        [
            "train-prior",
            "--stage",
            "unet",
            "--data",
            str(tmp_path),
            "--output-dir",
            str(tmp_path / "u"),
            "--loss",
            "mse",
        ]
    )
    with pytest.raises(SiloError, match="VAE's reconstruction loss"):
        run(args)


def test_command_line_words_map_to_the_saved_config_fields(tmp_path, monkeypatch):
    """--output-dir, --crop-size, --validation-every and --prior-config fill the fields runs save (output, crop,
    eval_every, model); unset, the stage's defaults; a resumed run keeps the model config it saved."""
    import silo.training.prior as prior_training
    from silo.cli import build_parser
    from silo.cli.train_prior import DEFAULTS, run

    seen = []
    monkeypatch.setattr(prior_training, "train", lambda cfg, resume=None: seen.append(cfg) or {})
    base = ["train-prior", "--stage", "vae", "--data", str(tmp_path), "--output-dir", str(tmp_path / "run")]
    run(
        build_parser().parse_args(
            [*base, "--crop-size", "32", "--validation-every", "5", "--prior-config", json.dumps(TINY_VAE)]
        )
    )
    assert (seen[-1].output, seen[-1].crop, seen[-1].eval_every, seen[-1].model) == (
        str(tmp_path / "run"),
        32,
        5,
        TINY_VAE,
    )
    run(build_parser().parse_args(base))
    assert (seen[-1].crop, seen[-1].eval_every, seen[-1].model) == (
        DEFAULTS["vae"]["crop_size"],
        DEFAULTS["vae"]["validation_every"],
        {},
    )
    with pytest.raises(SiloError, match="--prior-config must be a JSON object"):
        run(build_parser().parse_args([*base, "--prior-config", "[1]"]))
    ckpt = tmp_path / "run" / "checkpoints" / "step-0000001"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 1, "config": {"model": TINY_VAE, "crop": 32}}))
    run(build_parser().parse_args([*base, "--resume-from-checkpoint", "latest"]))
    assert seen[-1].model == TINY_VAE


def test_unknown_vae_loss_is_refused(tmp_path):
    with pytest.raises(SiloError, match="unknown VAE loss 'l3'"):
        train(config(tmp_path, "vae", 1, loss="l3"), images=fake_images(), eval_crops=fake_crops())
