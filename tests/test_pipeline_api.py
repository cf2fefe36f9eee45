"""The Python surface: `silo.SiloPipeline` (diffusers-style) restores as `silo restore` does, and the top-level
names of `silo` are the documented objects, loaded lazily."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import silo
from silo import SiloError, SiloPipeline
from silo.cli import main
from silo.data.photos import load_example
from silo.io.images import pil_to_tensor, tensor_to_pil

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    pipe = SiloPipeline.from_pretrained()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def small():
    """A 64 px crop of the bundled example: quick to restore."""
    return tensor_to_pil(load_example("astronaut", 64))


def test_pipeline_restores_the_bundled_example_as_silo_restore_does(pipe, tmp_path):
    """The README's main job (`silo restore --simulate --example astronaut --task sr4`) and the pipeline on the
    same image with the same settings: the same pixels, settings, sources and metrics."""
    argv = "restore --simulate --example astronaut --task sr4 --no-progress --no-lpips --output-dir"
    assert main([*argv.split(), str(tmp_path)]) == 0
    (log_path,) = sorted(tmp_path.glob("*.json"))
    cli_log = json.loads(log_path.read_text())
    cli_image = np.asarray(Image.open(log_path.with_suffix(".png")))

    out = SiloPipeline.from_pretrained()(
        tensor_to_pil(load_example("astronaut")), task="sr4", simulate=True, lpips=False
    )
    (image,), (log,) = out.images, out.logs
    assert isinstance(image, Image.Image) and image.size == (256, 256)
    assert np.array_equal(np.asarray(image), cli_image)
    assert log["settings"] == cli_log["settings"] and log["setting_sources"] == cli_log["setting_sources"]
    assert log["identity"]["key"] == cli_log["identity"]["key"] and log["seed"] == cli_log["seed"] == 1000
    assert log["metrics"]["psnr"] == pytest.approx(cli_log["metrics"]["psnr"], abs=1e-9)
    assert log["settings"]["steps"] == 50  # the shipped prior card's, as in silo restore


def test_generator_steps_and_output_types(pipe, small, tmp_path):
    """A torch.Generator's seed is the run's seed, as `--seed`; `num_inference_steps` is `--steps`; a batch of
    images equals single runs; `np`/`pt` give [0, 1] arrays, `return_dict=False` a tuple."""
    png = tmp_path / "small.png"
    small.save(png)
    argv = "--simulate --task sr4 --seed 7 --steps 20 --no-progress --no-lpips --output-dir"
    assert main(["restore", str(png), *argv.split(), str(tmp_path / "cli")]) == 0
    (log_path,) = sorted((tmp_path / "cli").glob("*.json"))
    cli = np.asarray(Image.open(log_path.with_suffix(".png")))

    out = pipe(
        [small, small.transpose(Image.Transpose.FLIP_LEFT_RIGHT)],
        task="sr4",
        simulate=True,
        generator=torch.Generator().manual_seed(7),
        num_inference_steps=20,
        output_type="np",
        lpips=False,
    )
    assert out.images.shape == (2, 64, 64, 3) and 0.0 <= out.images.min() and out.images.max() <= 1.0
    assert np.array_equal(np.round(out.images[0] * 255).astype(np.uint8), cli)
    assert [log["seed"] for log in out.logs] == [7, 7] and out.logs[0]["settings"]["steps"] == 20
    assert out.logs[0]["setting_sources"]["steps"] == "request" and out.logs[0]["batch_size"] == 2

    single = pipe(
        png,
        task="sr4",
        simulate=True,
        generator=7,
        num_inference_steps=20,
        output_type="pt",
        return_dict=False,
        lpips=False,
    )
    images, logs = single
    assert isinstance(images[0], torch.Tensor) and images[0].shape == (1, 3, 64, 64)
    assert np.array_equal(np.round(images[0][0].permute(1, 2, 0).numpy() * 255).astype(np.uint8), cli)
    assert logs[0]["identity"]["key"] == json.loads(log_path.read_text())["identity"]["key"]

    other = pipe(small, task="sr4", simulate=True, generator=[torch.Generator().manual_seed(8)], lpips=False)
    assert other.logs[0]["seed"] == 8


def test_progress_bar_follows_diffusers_configuration(small, capsys):
    pipe = SiloPipeline.from_pretrained()
    pipe.set_progress_bar_config(desc="restoring with silo", ascii=True)
    out = pipe(small, task="sr4", num_inference_steps=4, start_strength=1.0, lpips=False)  # from noise: 4 steps
    err = capsys.readouterr().err
    assert out.logs[0]["settings"]["steps"] == 4 and out.logs[0]["settings"]["start_strength"] == 1.0
    assert "restoring with silo" in err and "4/4" in err, err
    pipe.set_progress_bar_config(disable=True)
    pipe(small, task="sr4", num_inference_steps=4, lpips=False)
    assert "restoring with silo" not in capsys.readouterr().err


def test_to_moves_and_casts_and_returns_the_pipeline(small):
    pipe = SiloPipeline.from_pretrained()
    pipe.set_progress_bar_config(disable=True)
    pipe(small, task="sr4", lpips=False)  # loads the task's operator
    assert pipe.to("cpu") is pipe and pipe.device == torch.device("cpu")
    assert pipe.to(torch.bfloat16) is pipe and pipe.dtype == torch.bfloat16
    assert next(pipe.models.prior.unet.parameters()).dtype == torch.bfloat16
    assert pipe._dtype == "bfloat16"  # the dtype results are keyed by
    pipe.to(dtype=torch.float32)
    assert next(pipe.models.prior.vae.parameters()).dtype == torch.float32


def test_bad_calls_are_one_line_errors(pipe, small):
    with pytest.raises(SiloError, match="output_type must be one of pil, np, pt, got 'latent'"):
        pipe(small, output_type="latent")
    with pytest.raises(SiloError, match="got 3 generators for 1 images"):
        pipe(small, generator=[1, 2, 3])
    with pytest.raises(SiloError, match="expected a PIL image, a tensor or a file, got dict"):
        pipe({"not": "an image"})
    with pytest.raises(SiloError, match="unknown task"):
        pipe(small, task="sr5")
    with pytest.raises(SiloError, match="torch_dtype must be float32, float16 or bfloat16"):
        SiloPipeline.from_pretrained(torch_dtype=torch.float64)


def test_top_level_names_are_the_documented_objects_and_load_lazily():
    from silo.api import restore
    from silo.degradations.tasks import load_task
    from silo.operators import load_operator
    from silo.pipelines import SiloPipelineOutput
    from silo.priors.prior import Prior
    from silo.samplers.registry import SAMPLERS, register_sampler
    from silo.settings import resolve

    expected = {
        "restore": restore,
        "load_task": load_task,
        "load_operator": load_operator,
        "Prior": Prior,
        "SAMPLERS": SAMPLERS,
        "register_sampler": register_sampler,
        "resolve": resolve,
        "SiloPipeline": SiloPipeline,
        "SiloPipelineOutput": SiloPipelineOutput,
        "SiloError": SiloError,
    }
    assert set(silo.__all__) == {"SiloError", "__version__", *silo._LAZY}
    for name, obj in expected.items():
        assert getattr(silo, name) is obj and name in silo.__all__, name
    import importlib.metadata as md

    assert md.version("silo-restore") == silo.__version__  # the version is written in one place
    code = (
        "import sys, silo; heavy = [m for m in ('torch', 'diffusers', 'silo.pipelines', 'silo.api') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_inputs_folders_batches_and_lists_give_one_result_each_in_order(pipe, small, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    small.save(folder / "a.png")
    small.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(folder / "b.png")
    out = pipe(folder, task="sr4", simulate=True, method="naive", lpips=False)
    assert [log["name"] for log in out.logs] == ["a", "b"] and len(out.images) == 2

    batch = torch.cat([pil_to_tensor(small), pil_to_tensor(small.transpose(Image.Transpose.FLIP_TOP_BOTTOM))])
    out = pipe([batch, small], task="sr4", simulate=True, method="naive", lpips=False)
    assert [log["name"] for log in out.logs] == ["image-000", "image-001", "image-002"]
    assert np.array_equal(np.asarray(out.images[0]), np.asarray(out.images[2]))  # the same image, the same result
    assert not np.array_equal(np.asarray(out.images[0]), np.asarray(out.images[1]))
    with pytest.raises(SiloError, match="share the name"):
        pipe([folder / "a.png", folder / "a.png"], task="sr4", simulate=True, method="naive")
