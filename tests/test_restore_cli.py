"""`silo restore` end to end with a tiny random prior and operators saved to disk: every task x both
operator kinds, both modes, outputs and logs, resumption, and every kind of bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from silo.cli import main
from silo.degradations import list_tasks
from silo.testing import random_images, tiny_prior

SIZE = 64  # blur tasks use 61x61 kernels with reflection padding: images need more than 30 px a side


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from silo.operators import CNNOperator, ReadoutOperator
    from silo.operators.features import feature_channels

    root = tmp_path_factory.mktemp("models")
    prior = tiny_prior()
    prior.save_pretrained(root / "prior")
    torch.manual_seed(0)
    small = dict(latent_channels=4, embedding_dim=prior.embedding_dim)
    CNNOperator(**small, channels=(8, 8, 8, 8), norm_size=16).save_pretrained(root / "cnn")
    readout = dict(
        feature_channels=feature_channels(prior.unet),
        bottleneck_channels=8,
        projection_dim=16,
        norm_groups=4,
        head_channels=(8, 8),
        norm_size=16,
    )
    ReadoutOperator(**small, **readout).save_pretrained(root / "readout")
    ReadoutOperator(**small, **readout, mask_channel=True).save_pretrained(root / "readout-mask")
    CNNOperator(
        latent_channels=8, embedding_dim=prior.embedding_dim, channels=(8, 8, 8, 8), norm_size=16
    ).save_pretrained(root / "cnn-8ch")
    CNNOperator(
        **small, channels=(8, 8, 8, 8), norm_size=16, residual=True, blur_kernel_scale=prior.vae_scale
    ).save_pretrained(root / "cnn-kernel")
    nan = CNNOperator(**small, channels=(8, 8, 8, 8), norm_size=16)
    with torch.no_grad():
        nan.processing[-1].bias.fill_(float("nan"))
    nan.save_pretrained(root / "cnn-nan")
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for i in range(2):
        x = random_images(1, (SIZE, SIZE), seed=i)[0]
        arr = ((x.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
        Image.fromarray(arr).save(folder / f"photo{i}.png")
    return folder


def run(models, *args, operator="cnn", steps="2"):
    argv = ["restore", "--prior", str(models / "prior"), "--steps", steps, "--no-progress", *args]
    if operator and "--operator" not in args:
        argv += ["--operator", str(models / operator)]
    return main(argv)


def outputs(folder: Path) -> list[str]:
    """File names with the identity key taken out (``NAME_TASK_METHOD_sSEED_KEY.png`` -> ``..._sSEED.png``)."""
    import re

    names = (
        [re.sub(r"_[0-9a-f]{8}(?=(_grid)?\.(png|json)$)", "", p.name) for p in folder.iterdir()]
        if folder.exists()
        else []
    )
    return sorted(names)


def one(folder: Path, prefix: str, suffix: str = ".json") -> Path:
    """The single result file ``PREFIX_KEY{suffix}`` in ``folder``."""
    found = sorted(Path(folder).glob(f"{prefix}_" + "[0-9a-f]" * 8 + suffix))
    assert len(found) == 1, f"{prefix}*{suffix} in {folder}: {found}"
    return found[0]


@pytest.mark.parametrize("kind", ["cnn", "readout"])
@pytest.mark.parametrize("task", list_tasks())
def test_every_task_and_operator_kind_simulated(models, photos, tmp_path, task, kind):
    op = "readout-mask" if (kind == "readout" and task == "inpaint_random") else kind
    rc = run(
        models, str(photos / "photo0.png"), "--simulate", "--task", task, "--output-dir", str(tmp_path), operator=op
    )
    assert rc == 0
    stem = f"photo0_{task}_silo_s1000"
    assert outputs(tmp_path) == sorted([f"{stem}.json", f"{stem}.png", f"{stem}_grid.png"])
    log = json.loads(one(tmp_path, stem).read_text())
    for key in ("psnr", "ssim", "psnr_y", "consistency_psnr", "ms_ssim", "lpips_alex", "seconds"):
        assert key in log["metrics"]
    assert isinstance(log["metrics"]["psnr"], float)
    assert log["task"]["name"] == task and log["mode"] == "simulate"
    assert log["operator"]["kind"] == kind and log["settings"]["steps"] == 2
    assert "torch" in log["versions"] and log["command"]
    assert Image.open(one(tmp_path, stem, ".png")).size == (SIZE, SIZE)
    grid = Image.open(one(tmp_path, stem, "_grid.png"))
    assert grid.size[0] > 4 * SIZE and grid.size[1] > SIZE


def test_rerun_skips_finished_and_never_overwrites(models, photos, tmp_path):
    args = [str(photos), "--simulate", "--task", "sr4", "--output-dir", str(tmp_path)]
    assert run(models, *args) == 0
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert len(before) == 6
    assert run(models, *args) == 0
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


def test_batch_of_two_matches_single_runs(models, photos, tmp_path):
    assert (
        run(
            models, str(photos), "--simulate", "--task", "sr4", "--batch-size", "2", "--output-dir", str(tmp_path / "b")
        )
        == 0
    )
    assert run(models, str(photos), "--simulate", "--task", "sr4", "--output-dir", str(tmp_path / "s")) == 0
    for name in ("photo0", "photo1"):
        a = np.asarray(Image.open(one(tmp_path / "b", f"{name}_sr4_silo_s1000", ".png")), dtype=np.int16)
        b = np.asarray(Image.open(one(tmp_path / "s", f"{name}_sr4_silo_s1000", ".png")), dtype=np.int16)
        assert np.abs(a - b).max() <= 1
        assert json.loads((one(tmp_path / "b", f"{name}_sr4_silo_s1000", ".json")).read_text())["batch_size"] == 2


def test_measurement_mode_upscales_a_low_resolution_photo(models, tmp_path):
    low = tmp_path / "low.png"
    Image.fromarray(np.full((16, 24, 3), 120, np.uint8)).save(low)
    assert run(models, str(low), "--task", "sr4", "--output-dir", str(tmp_path / "o")) == 0
    assert Image.open(one(tmp_path / "o", "low_sr4_silo_s1000", ".png")).size == (96, 64)
    log = json.loads((one(tmp_path / "o", "low_sr4_silo_s1000", ".json")).read_text())
    assert log["mode"] == "measurement" and "consistency_psnr_vs_measurement" in log["metrics"]


def test_measurement_mode_inpainting_needs_a_mask_of_the_right_size(models, photos, tmp_path, capsys):
    img = str(photos / "photo0.png")
    assert run(models, img, "--task", "inpaint_center", "--output-dir", str(tmp_path / "a")) == 2
    assert "needs --mask" in capsys.readouterr().err
    mask = tmp_path / "mask.png"
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(mask)
    assert run(models, img, "--task", "inpaint_center", "--mask", str(mask), "--output-dir", str(tmp_path / "b")) == 1
    assert "mask is 32x32 but the image is 64x64" in capsys.readouterr().err
    assert outputs(tmp_path / "b") == []
    good = np.full((SIZE, SIZE), 255, np.uint8)
    good[16:48, 16:48] = 0
    Image.fromarray(good).save(mask)
    assert run(models, img, "--task", "inpaint_center", "--mask", str(mask), "--output-dir", str(tmp_path / "c")) == 0


def test_measurement_mode_blur_with_known_kernel(models, photos, tmp_path):
    kernel = tmp_path / "k.npy"
    k = np.zeros((9, 9))
    k[4, 2:7] = 1
    np.save(kernel, k)
    assert (
        run(
            models,
            str(photos / "photo0.png"),
            "--task",
            "motion_blur",
            "--kernel",
            str(kernel),
            "--output-dir",
            str(tmp_path / "o"),
        )
        == 0
    )


def test_kernel_aware_operator_reads_the_given_kernel(models, photos, tmp_path):
    """With --kernel the kernel reaches a kernel-aware operator (the restoration changes with it), while a
    plain operator's guidance does not depend on it (same measurement, same result)."""
    kernels = []
    for i, row in enumerate((4, 2)):
        k = np.zeros((9, 9))
        k[row, 2:7] = 1
        kernels.append(tmp_path / f"k{i}.npy")
        np.save(kernels[-1], k)
    for operator, differs in (("cnn", False), ("cnn-kernel", True)):
        images = []
        for i, kernel in enumerate(kernels):
            out = tmp_path / f"{operator}-{i}"
            assert (
                run(
                    models,
                    str(photos / "photo0.png"),
                    "--task",
                    "motion_blur",
                    "--kernel",
                    str(kernel),
                    "--output-dir",
                    str(out),
                    "--seed",
                    "3",
                    operator=operator,
                )
                == 0
            )
            (png,) = [p for p in out.rglob("*.png") if "grid" not in p.name]
            images.append(np.asarray(Image.open(png)))
        assert (not np.array_equal(*images)) == differs, operator


def _save_bad_inputs(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    rgb = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    files = {}
    Image.fromarray(rgb).save(folder / "good.png")
    files["truncated"] = folder / "truncated.png"
    Image.fromarray(rgb).save(files["truncated"])
    data = files["truncated"].read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["notimage"] = folder / "notimage.png"
    files["notimage"].write_text("hello")
    files["grey"] = folder / "grey.png"
    Image.fromarray(rgb[..., 0]).save(files["grey"])
    files["rgba"] = folder / "rgba.png"
    Image.fromarray(np.dstack([rgb, np.full((SIZE, SIZE), 128, np.uint8)])).save(files["rgba"])
    files["16bit"] = folder / "deep.png"
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(files["16bit"])
    files["cmyk"] = folder / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(files["cmyk"])
    return files


def test_bad_images_each_get_one_clear_error_and_the_good_one_still_runs(models, tmp_path, capsys):
    files = _save_bad_inputs(tmp_path / "in")
    out = tmp_path / "out"
    rc = run(models, str(tmp_path / "in"), "--simulate", "--task", "sr4", "--output-dir", str(out))
    err = capsys.readouterr().err
    assert rc == 1
    assert outputs(out) == sorted(
        ["good_sr4_silo_s1000.json", "good_sr4_silo_s1000.png", "good_sr4_silo_s1000_grid.png"]
    )
    assert "truncated.png: unreadable or truncated image" in err
    assert "notimage.png: not a readable image" in err
    assert "grey.png: greyscale image" in err and "--convert-rgb" in err
    assert "rgba.png: RGBA" in err
    assert "deep.png: 16-bit greyscale image" in err
    assert "cmyk.jpg: CMYK image" in err
    # with --convert-rgb the convertible ones run
    rc = run(
        models,
        str(files["grey"]),
        str(files["rgba"]),
        str(files["16bit"]),
        str(files["cmyk"]),
        "--convert-rgb",
        "--simulate",
        "--task",
        "sr4",
        "--output-dir",
        str(tmp_path / "conv"),
    )
    assert rc == 0 and len(outputs(tmp_path / "conv")) == 12


def test_too_large_and_wrong_size_images(models, tmp_path, capsys):
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((128, 128, 3), np.uint8)).save(big)
    assert run(models, str(big), "--simulate", "--max-pixels", "10000", "--output-dir", str(tmp_path / "a")) == 1
    assert "larger than the limit of 10000 pixels" in capsys.readouterr().err
    odd = tmp_path / "odd.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 68, 3), dtype=np.uint8)).save(odd)
    assert run(models, str(odd), "--simulate", "--task", "jpeg", "--output-dir", str(tmp_path / "b")) == 1
    err = capsys.readouterr().err
    assert "not a multiple of 8 px" in err and "--pad" in err
    assert outputs(tmp_path / "b") == []
    assert run(models, str(odd), "--simulate", "--task", "jpeg", "--pad", "--output-dir", str(tmp_path / "c")) == 0
    assert Image.open(one(tmp_path / "c", "odd_jpeg_silo_s1000", ".png")).size == (68, 60)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "nope"], "unknown task 'nope'"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--operator", "{models}/cnn-8ch"], "works on 8-channel latents but the prior's VAE has 4"),
        (["--task", "{bad_yaml}"], "malformed YAML"),
        (["--prior", "{tmp}/missing-prior"], "prior folder not found"),
        (["--operator", "{tmp}/missing-op"], "missing-op"),
    ],
)
def test_configuration_errors_are_one_line(models, photos, tmp_path, capsys, args, message):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("degradation: [unclosed")
    args = [a.format(models=models, bad_yaml=bad_yaml, tmp=tmp_path) for a in args]
    rc = run(models, str(photos / "photo0.png"), "--simulate", "--output-dir", str(tmp_path / "o"), *args)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert message in err
    assert len(err.splitlines()) == 1 and err.startswith("silo restore: error:")
    assert outputs(tmp_path / "o") == []


def test_preset_with_missing_published_file_says_where(models, photos, tmp_path, capsys):
    rc = main(
        [
            "restore",
            "--preset",
            "rg-ffhq-sr4",
            "--weights-dir",
            str(tmp_path / "ckpt"),
            str(photos / "photo0.png"),
            "--simulate",
            "--output-dir",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and str(tmp_path / "ckpt" / "rg_ffhq_sr_4.pt") in err


def test_nan_during_sampling_leaves_no_files(models, photos, tmp_path, capsys):
    rc = run(models, str(photos / "photo0.png"), "--simulate", "--output-dir", str(tmp_path / "o"), operator="cnn-nan")
    assert rc == 1
    assert "NaN or Inf" in capsys.readouterr().err
    assert outputs(tmp_path / "o") == []


def test_dataset_input_with_index_selection(models, tmp_path):
    import datasets

    imgs = [Image.fromarray(np.full((SIZE, SIZE, 3), 40 * i, np.uint8)) for i in range(4)]
    ds = datasets.Dataset.from_dict({"image": imgs}, features=datasets.Features({"image": datasets.Image()}))
    ds.save_to_disk(str(tmp_path / "ds"))
    rc = run(
        models,
        "--dataset",
        str(tmp_path / "ds"),
        "--list",
        "1,3",
        "--simulate",
        "--task",
        "sr8",
        "--save",
        "image",
        "--output-dir",
        str(tmp_path / "o"),
    )
    assert rc == 0
    assert outputs(tmp_path / "o") == [
        "ds_00001_sr8_silo_s1000.json",
        "ds_00001_sr8_silo_s1000.png",
        "ds_00003_sr8_silo_s1000.json",
        "ds_00003_sr8_silo_s1000.png",
    ]


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["restore", "--help"])
    text = capsys.readouterr().out
    for opt in (
        "--simulate",
        "--example",
        "--dataset",
        "--preset",
        "--prior",
        "--operator",
        "--steps",
        "--eta",
        "--guidance-scale",
        "--cfg-fix",
        "--seed",
        "--deterministic",
        "--batch-size",
        "--save",
        "--mask",
        "--kernel",
    ):
        assert opt in text


def test_preset_runs_a_published_format_file_with_the_scripts_settings(models, photos, tmp_path):
    """A CNN file in the published container (a plain pickled state dict) is found in --weights-dir under
    the preset's name, loaded safely, and run with the script's task, eta, clamp and seed."""
    from silo.operators import load_operator

    weights = tmp_path / "trained_ckpt"
    weights.mkdir()
    op = load_operator(models / "cnn")
    torch.save(dict(op.state_dict()), weights / "cnn_ffhq_sr_8.pt")
    rc = main(
        [
            "restore",
            "--preset",
            "cnn-ffhq-sr8",
            "--weights-dir",
            str(weights),
            "--prior",
            str(models / "prior"),
            "--steps",
            "2",
            "--no-progress",
            str(photos / "photo0.png"),
            "--simulate",
            "--output-dir",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 0
    log = json.loads((one(tmp_path / "o", "photo0_sr8_silo_s1000", ".json")).read_text())
    assert log["preset"] == "cnn-ffhq-sr8" and log["task"]["name"] == "sr8"
    assert log["settings"]["eta"] == 0.5 and log["settings"]["clamp_measurement"] is True
    assert log["settings"]["prompt"] == "A high quality photo of a face"
    assert log["operator"]["source"].endswith("cnn_ffhq_sr_8.pt")


def test_interrupted_write_leftovers_do_not_block_resumption(models, photos, tmp_path, capsys):
    out = tmp_path / "o"
    assert run(models, str(photos / "photo0.png"), "--simulate", "--task", "sr4", "--output-dir", str(out)) == 0
    one(out, "photo0_sr4_silo_s1000").unlink()  # a run killed after its image, before its log
    one(out, "photo0_sr4_silo_s1000", ".png").write_bytes(b"half-written by a killed run")
    assert run(models, str(photos / "photo0.png"), "--simulate", "--task", "sr4", "--output-dir", str(out)) == 0
    assert "incomplete leftover" in capsys.readouterr().err
    assert Image.open(one(out, "photo0_sr4_silo_s1000", ".png")).size == (SIZE, SIZE)


def test_measurement_mode_pad_for_super_resolution(models, tmp_path):
    low = tmp_path / "low.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (15, 17, 3), dtype=np.uint8)).save(low)
    assert run(models, str(low), "--task", "sr4", "--output-dir", str(tmp_path / "a")) == 1
    assert run(models, str(low), "--task", "sr4", "--pad", "--output-dir", str(tmp_path / "b")) == 0
    assert Image.open(one(tmp_path / "b", "low_sr4_silo_s1000", ".png")).size == (68, 60)
    grid = Image.open(one(tmp_path / "b", "low_sr4_silo_s1000", "_grid.png"))
    assert grid.size[0] < 4 * 72, "grid panels are shown at the true size, not the padded one"


def test_simulate_refuses_mask_and_kernel(models, photos, tmp_path, capsys):
    mask = tmp_path / "m.png"
    Image.fromarray(np.full((SIZE, SIZE), 255, np.uint8)).save(mask)
    rc = run(
        models,
        str(photos / "photo0.png"),
        "--simulate",
        "--task",
        "inpaint_center",
        "--mask",
        str(mask),
        "--output-dir",
        str(tmp_path / "o"),
    )
    assert rc == 2 and "with --simulate the task draws its own" in capsys.readouterr().err


def test_user_degradation_from_a_python_file(models, photos, tmp_path):
    mod = tmp_path / "mydeg.py"
    mod.write_text("import torch\n\ndef darken(x):\n    return 0.5 * x - 0.2\n")
    rc = run(
        models,
        str(photos / "photo0.png"),
        "--simulate",
        "--degradation",
        f"{mod}:darken",
        "--noise-sigma",
        "0.01",
        "--output-dir",
        str(tmp_path / "o"),
    )
    assert rc == 0
    log = json.loads((one(tmp_path / "o", "photo0_user-mydeg-darken_silo_s1000", ".json")).read_text())
    assert log["task"]["source"] == f"{mod}:darken" and log["task"]["noise_sigma"] == 0.01


def test_peer_methods_with_options_through_restore(models, photos, tmp_path, capsys):
    rc = run(
        models,
        str(photos / "photo0.png"),
        "--simulate",
        "--task",
        "sr4",
        "--method",
        "ldps",
        "--method-option",
        "zeta=0.5",
        "--output-dir",
        str(tmp_path / "o"),
        operator=None,
    )
    assert rc == 0
    log = json.loads((one(tmp_path / "o", "photo0_sr4_ldps-zeta0.5_s1000", ".json")).read_text())
    assert log["method"] == "ldps" and log["method_options"] == {"zeta": 0.5} and log["operator"] is None
    rc = run(
        models,
        str(photos / "photo0.png"),
        "--simulate",
        "--method",
        "ldps",
        "--method-option",
        "gamma=1",
        "--output-dir",
        str(tmp_path / "p"),
        operator=None,
    )
    assert rc == 2 and "no selected method takes 'gamma'" in capsys.readouterr().err
