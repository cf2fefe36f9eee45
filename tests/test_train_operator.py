"""`silo train-operator` with a tiny random prior and a handful of generated PNGs: each kind learns, a user
`module:callable` degradation trains and restores, resume is exact, bad input fails early with one line,
and a 2-process CPU run splits the data and writes one operator."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from silo.degradations.user import load_user_degradation, probe_scale, user_task
from silo.errors import SiloError
from silo.testing import random_images, tiny_prior
from silo.training import data as tdata
from silo.training.operator import OperatorTrainer, TrainOperatorConfig, train_operator

CROP = 32
SMALL = {
    "cnn": {"channels": [8, 8, 8, 8]},
    "readout": {"bottleneck_channels": 8, "projection_dim": 16, "norm_groups": 4, "head_channels": [8, 8]},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def save_png(x: torch.Tensor, path: Path) -> None:
    Image.fromarray(((x.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()).save(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    tiny_prior().save_pretrained(root / "prior")
    (root / "imgs").mkdir()
    for i in range(8):
        save_png(random_images(1, (40, 48), seed=i)[0], root / "imgs" / f"{i}.png")
    (root / "deg.py").write_text(
        "import torch.nn.functional as F\n"
        "def halve(x):\n    return F.avg_pool2d(x, 2)\n"
        "class Darken:\n    def __call__(self, x):\n        return 0.5 * x - 0.2\n"
        "def nan(x):\n    return x * float('nan')\n"
        "def grey(x):\n    return x.mean(1, keepdim=True)\n"
        "def odd(x):\n    return x[..., :-3, :-3]\n"
        "def numpy(x):\n    return x.numpy()\n"
        "class NeedsArgs:\n    def __init__(self, k):\n        self.k = k\n"
    )
    return root


def config(files: Path, out: Path, **kw) -> TrainOperatorConfig:
    kind = kw.pop("kind", "cnn")
    base = dict(
        prior=str(files / "prior"),
        output=str(out),
        kind=kind,
        task="sr4",
        data=str(files / "imgs"),
        max_steps=12,
        batch_size=4,
        crop_size=CROP,
        validation_images=2,
        validation_every=100,
        checkpoint_every=100,
        report_to="none",
        show_progress=False,
        lr=2e-3,
        operator_config=SMALL[kind],
    )
    return TrainOperatorConfig(**{**base, **kw})


@pytest.mark.parametrize("kind,task", [("cnn", "sr4"), ("readout", "inpaint_random")])
def test_each_kind_reduces_the_loss_and_restores(files, tmp_path, kind, task):
    from silo.operators import check_compatible, load_operator
    from silo.operators.features import feature_channels
    from silo.priors.prior import Prior

    card = train_operator(config(files, tmp_path / "op", kind=kind, task=task))
    first, last = card["initial_validation_loss"], card["final_validation_loss"]
    assert last < 0.8 * first, (first, last)  # measured on the fixed validation batch (fixed draws)
    op = load_operator(tmp_path / "op")
    prior = Prior.from_pretrained(files / "prior")
    check_compatible(op, prior.latent_channels, prior.embedding_dim, feature_channels(prior.unet))
    assert op.kind == kind and bool(getattr(op.config, "mask_channel", False)) == (kind == "readout")
    saved = json.loads((tmp_path / "op" / "model_card.json").read_text())
    assert saved["kind"] == kind and saved["task"] == task and saved["steps"] == 12
    assert saved["noise_sigma_range"] == [0.0, 0.02 if kind == "cnn" else 0.05]
    assert saved["data"] == {"source": str(files / "imgs"), "split": None, "train_images": 6, "validation_images": 2}
    assert saved["final_validation_loss"] == last
    grids = sorted((tmp_path / "op" / "validation").glob("*.png"))
    assert [g.name for g in grids] == ["step-0000000.png", "step-0000012.png"]
    assert Image.open(grids[-1]).size[0] > 4 * CROP
    from silo.cli import main

    rc = main(
        [
            "restore",
            "--prior",
            str(files / "prior"),
            "--operator",
            str(tmp_path / "op"),
            "--task",
            task,
            "--simulate",
            str(files / "imgs" / "0.png"),
            "--pad",
            "--steps",
            "2",
            "--no-progress",
            "--output-dir",
            str(tmp_path / "restored"),
        ]
    )
    assert rc == 0 and len(list((tmp_path / "restored").glob("*.png"))) == 2


def test_user_degradation_trains_then_restores(files, tmp_path):
    from silo.operators import load_operator
    from silo.pipeline import restore
    from silo.priors.prior import Prior
    from silo.samplers import SamplerSettings

    spec = f"{files / 'deg.py'}:halve"
    card = train_operator(config(files, tmp_path / "op", task=None, degradation=spec, max_steps=6))
    assert card["degradation"] == spec and card["final_validation_loss"] < card["initial_validation_loss"]
    task = user_task(spec, noise_sigma=0.01)
    assert task.degradation.scale == 2  # a clean 2x down-scale is treated like super-resolution
    prior = Prior.from_pretrained(files / "prior")
    x = random_images(1, (CROP, CROP), seed=9)
    res = restore(
        prior,
        task,
        SamplerSettings(steps=2),
        [0],
        reference=x,
        operator=load_operator(tmp_path / "op"),
        show_progress=False,
    )
    assert res.output.shape == x.shape and res.measurement.shape[-1] == CROP // 2
    assert torch.isfinite(res.output).all()


def test_user_degradation_contract(files):
    deg = load_user_degradation(f"{files / 'deg.py'}:Darken")  # a class, built without arguments
    assert deg.scale == 1 and torch.allclose(deg.A(torch.zeros(1, 3, 8, 8)), torch.full((1, 3, 8, 8), -0.2))
    bad = {
        "nan": "NaN",
        "grey": "3 channels",
        "odd": "clean integer down-scale",
        "numpy": "not a torch tensor",
        "NeedsArgs": "without arguments",
        "missing": "no attribute",
    }
    for name, words in bad.items():
        with pytest.raises(SiloError, match=words):
            load_user_degradation(f"{files / 'deg.py'}:{name}")
    with pytest.raises(SiloError, match="module:callable"):
        load_user_degradation("no-colon")
    with pytest.raises(SiloError, match="cannot import"):
        load_user_degradation("silo_no_such_module:f")
    assert probe_scale(lambda x: x[..., ::4, ::4], "stride4") == 4


def test_resume_continues_exactly(files, tmp_path):
    from silo.operators import load_operator

    straight = train_operator(config(files, tmp_path / "a", max_steps=6, checkpoint_every=2))
    train_operator(config(files, tmp_path / "b", max_steps=4, checkpoint_every=1, checkpoints_total_limit=2))
    ckpts = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    assert ckpts == ["step-3", "step-4"]  # only the newest K are kept
    trainer = (
        OperatorTrainer(config(files, tmp_path / "b", max_steps=6, checkpoint_every=2, resume_from_checkpoint="latest"))
        .setup()
        .resume()
    )
    assert trainer.step == 4
    saved = torch.load(tmp_path / "b" / "checkpoints" / "step-4" / "optimizer.bin", weights_only=True)
    now = trainer.optimizer.state_dict()
    assert now["param_groups"] == saved["param_groups"]
    for k, state in saved["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(now["state"][k][name]), torch.as_tensor(value)), (k, name)
    resumed = trainer.train()
    assert resumed["steps"] == 6 and resumed["steps_this_session"] == 2
    a, b = load_operator(tmp_path / "a"), load_operator(tmp_path / "b")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(pa, pb, atol=1e-6), name  # the same weights as the uninterrupted run
    assert resumed["final_validation_loss"] == pytest.approx(straight["final_validation_loss"], rel=1e-5)


def test_resume_and_init_refuse_other_configurations(files, tmp_path):
    from silo.operators import CNNOperator

    train_operator(config(files, tmp_path / "b", max_steps=2, validation_images=0))
    with pytest.raises(SiloError, match="already holds checkpoints"):
        OperatorTrainer(config(files, tmp_path / "b", max_steps=4, validation_images=0)).setup()
    with pytest.raises(SiloError, match="another configuration: loss was 'l1', now 'l2'"):
        OperatorTrainer(
            config(files, tmp_path / "b", max_steps=4, validation_images=0, loss="l2", resume_from_checkpoint="latest")
        ).setup().resume()
    # a checkpoint written before --kernel-aware existed (no such keys) resumes as a plain CNN run
    from silo.training.operator import STATE_FILE, list_checkpoints

    (ckpt,) = list_checkpoints(tmp_path / "b" / "checkpoints")
    state = json.loads((ckpt / STATE_FILE).read_text())
    assert state["config"].pop("kernel_aware") is False and state["config"]["operator"].pop("blur_kernel_scale") == 0
    (ckpt / STATE_FILE).write_text(json.dumps(state))
    assert (
        OperatorTrainer(
            config(files, tmp_path / "b", max_steps=4, validation_images=0, resume_from_checkpoint="latest")
        )
        .setup()
        .resume()
        .step
        == 2
    )
    CNNOperator(latent_channels=8, embedding_dim=64, channels=(8, 8, 8, 8)).save_pretrained(tmp_path / "other")
    with pytest.raises(SiloError, match="8-channel latents but the prior's VAE has 4"):
        OperatorTrainer(config(files, tmp_path / "c", init_operator=str(tmp_path / "other"))).setup()


def test_kernel_aware_operator_trains_on_motion_blur(files, tmp_path):
    """--kernel-aware: the CNN reads each image's motion kernel; it learns, and is refused where it cannot work."""
    from silo.operators import load_operator

    card = train_operator(config(files, tmp_path / "ka", task="motion_blur", kernel_aware=True, max_steps=10))
    assert card["final_validation_loss"] < card["initial_validation_loss"]
    op = load_operator(tmp_path / "ka")
    assert op.needs_blur_kernel and op.config.blur_kernel_scale == tiny_prior().vae_scale
    assert card["operator"]["blur_kernel_scale"] == op.config.blur_kernel_scale
    with pytest.raises(SiloError, match="needs a blur task; the task sr4 has no blur kernel"):
        OperatorTrainer(config(files, tmp_path / "x", kernel_aware=True)).setup()
    with pytest.raises(
        SiloError,
        match=r"--kernel-aware is for operator kinds that read a blur kernel \(--operator-kind cnn\), not readout",
    ):
        OperatorTrainer(config(files, tmp_path / "y", kind="readout", kernel_aware=True)).setup()
    with pytest.raises(SiloError, match="kernel_aware was True, now False"):
        OperatorTrainer(
            config(files, tmp_path / "ka", task="motion_blur", max_steps=12, resume_from_checkpoint="latest")
        ).setup().resume()
    with pytest.raises(SiloError, match="kernel-aware True, this run is not"):
        OperatorTrainer(config(files, tmp_path / "z", task="motion_blur", init_operator=str(tmp_path / "ka"))).setup()


@pytest.mark.parametrize("kind", ["cnn", "readout"])
def test_training_defaults_come_from_the_kind(files, tmp_path, kind):
    """Noise range, learning rate, optimiser and untrained parameters are what the operator class declares."""
    from fnmatch import fnmatchcase

    from silo.operators import OPERATOR_CLASSES

    defaults = OPERATOR_CLASSES[kind].training_defaults
    trainer = OperatorTrainer(config(files, tmp_path / "op", kind=kind, lr=None)).setup()
    assert trainer.lr == defaults.lr and trainer.sigma_max == defaults.noise_sigma_max
    assert type(trainer.optimizer.optimizer) is defaults.optimizer_class()
    frozen = [name for name, p in trainer.model.named_parameters() if not p.requires_grad]
    assert all(any(fnmatchcase(name, pat) for pat in defaults.frozen_parameters) for name in frozen)
    assert bool(frozen) == bool(defaults.frozen_parameters)


def test_build_operator_gives_a_mask_channel_only_to_kinds_that_read_one():
    from silo.training.operator import build_operator

    prior = tiny_prior()
    assert build_operator("readout", prior, CROP, True, SMALL["readout"]).reads == {"features", "mask"}
    assert build_operator("readout", prior, CROP, False, SMALL["readout"]).reads == {"features"}
    assert build_operator("cnn", prior, CROP, True, SMALL["cnn"]).reads == {"z0"}  # a masked task, a CNN
    assert build_operator("cnn", prior, CROP, False, SMALL["cnn"], kernel_aware=True).reads == {"z0", "kernel"}


def test_kinds_without_training_defaults_are_refused():
    from silo.operators import trainable_kinds

    with pytest.raises(
        SiloError, match=f"--operator-kind must be one of {', '.join(trainable_kinds())}, got 'preserve'"
    ):
        TrainOperatorConfig(prior="p", output="o", kind="preserve", task="sr4").check()


def test_command_line_words_map_to_the_config(capsys):
    """--operator-kind, --output-dir, --init-from and --device {auto,cpu}; another --device is one line."""
    from silo.cli import build_parser, main
    from silo.cli.train_operator import config_from_args

    base = ["train-operator", "--prior", "p", "--task", "sr4", "--data", "d", "--output-dir", "o"]
    cfg = config_from_args(
        build_parser().parse_args([*base, "--operator-kind", "readout", "--init-from", "ops/a", "--device", "cpu"])
    )
    assert (cfg.output, cfg.kind, cfg.init_operator, cfg.cpu) == ("o", "readout", "ops/a", True)
    cfg = config_from_args(build_parser().parse_args(base))
    assert (cfg.kind, cfg.init_operator, cfg.cpu) == ("cnn", None, False)
    assert main([*base, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--device must be auto or cpu, got 'cuda'" in err and len(err.splitlines()) == 1, err


def test_bad_data_fails_before_training(files, tmp_path, capsys):
    from silo.cli import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "small").mkdir()
    save_png(random_images(1, (16, 16))[0], tmp_path / "small" / "a.png")
    save_png(random_images(1, (40, 40))[0], tmp_path / "small" / "b.png")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"not a png")
    save_png(random_images(1, (40, 40))[0], tmp_path / "broken" / "y.png")
    cases = {"empty": "no images", "small": "16x16, smaller than --crop-size 32", "broken": "not a readable image"}
    for folder, words in cases.items():
        argv = [
            "train-operator",
            "--prior",
            str(files / "prior"),
            "--task",
            "sr4",
            "--data",
            str(tmp_path / folder),
            "--output-dir",
            str(tmp_path / "out"),
            "--crop-size",
            str(CROP),
            "--report-to",
            "none",
        ]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_dataset_folder_through_the_cli_with_tensorboard(files, tmp_path):
    import datasets

    from silo.cli import main

    imgs = [Image.open(p).convert("RGB") for p in sorted((files / "imgs").glob("*.png"))]
    ds = datasets.Dataset.from_dict({"photo": imgs, "label": list(range(len(imgs)))})
    ds.cast_column("photo", datasets.Image()).save_to_disk(str(tmp_path / "ds"))
    argv = [
        "train-operator",
        "--prior",
        str(files / "prior"),
        "--task",
        "gaussian_blur",
        "--dataset",
        str(tmp_path / "ds"),
        "--output-dir",
        str(tmp_path / "op"),
        "--crop-size",
        str(CROP),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--validation-images",
        "1",
        "--num-workers",
        "1",
        "--no-progress",
        "--operator-config",
        json.dumps(SMALL["cnn"]),
    ]
    assert main(argv) == 0
    card = json.loads((tmp_path / "op" / "model_card.json").read_text())
    assert card["data"]["train_images"] == 7 and card["task"] == "gaussian_blur"
    assert list((tmp_path / "op" / "logs").rglob("events.out.tfevents.*"))  # TensorBoard by default
    with pytest.raises(SiloError, match="no image column 'label2'"):
        tdata.HFSource(str(tmp_path / "ds"), column="label2")


def test_without_tensorboard_training_logs_json_lines_and_says_so(files, tmp_path, monkeypatch, capsys):
    import importlib.util

    import silo.training.tracking as tracking
    from silo.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(tracking, "find_spec", lambda name: None if name == "tensorboard" else real(name))
    monkeypatch.setattr(tracking, "_NOTED", set())
    argv = [
        "train-operator",
        "--prior",
        str(files / "prior"),
        "--task",
        "sr4",
        "--data",
        str(files / "imgs"),
        "--crop-size",
        str(CROP),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--validation-images",
        "1",
        "--num-workers",
        "0",
        "--no-progress",
        "--operator-config",
        json.dumps(SMALL["cnn"]),
    ]
    assert main([*argv, "--output-dir", str(tmp_path / "a")]) == 0
    assert main([*argv, "--output-dir", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert err.count("tensorboard is not installed") == 1 and "pip install tensorboard" in err
    lines = (tmp_path / "a" / "logs" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines if "train/loss" in json.loads(line)][-1] == 2
    assert not list((tmp_path / "a" / "logs").rglob("events.out.tfevents.*"))


def test_augmentation_and_sharding_are_seeded():
    x = random_images(1, (40, 56), seed=1)
    a = tdata.augment(x, CROP, torch.Generator().manual_seed(3))
    assert a.shape == (1, 3, CROP, CROP) and a.abs().max() <= 1
    assert torch.equal(a, tdata.augment(x, CROP, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, tdata.augment(x, CROP, torch.Generator().manual_seed(4)))
    ranks = [tdata.ShardedBatches(list(range(10)), 2, seed=0, rank=r, world=2) for r in (0, 1)]
    first = [[i for i, _ in s.batch_keys(0)] for s in ranks]
    assert not set(first[0]) & set(first[1])
    later = tdata.ShardedBatches(list(range(10)), 2, seed=0, rank=1, world=2, start=3)
    assert next(iter(later)) == ranks[1].batch_keys(3)


def test_two_processes_split_the_data_and_write_one_operator(files, tmp_path):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
    }
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "silo",
        "train-operator",
        "--device",
        "cpu",
        "--prior",
        str(files / "prior"),
        "--task",
        "sr4",
        "--data",
        str(files / "imgs"),
        "--output-dir",
        str(tmp_path / "op"),
        "--crop-size",
        str(CROP),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--validation-images",
        "2",
        "--num-workers",
        "0",
        "--report-to",
        "none",
        "--no-progress",
        "--operator-config",
        json.dumps(SMALL["cnn"]),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("operator written to") == 1  # the main process reports once
    card = json.loads((tmp_path / "op" / "model_card.json").read_text())
    assert card["processes"] == 2 and card["effective_batch_size"] == 4
    a, b = card["first_batch_per_process"]
    assert len(a) == len(b) == 2 and not set(a) & set(b)  # each process reads its own images
    ckpt = tmp_path / "op" / "checkpoints" / "step-2"
    assert sorted(p.name for p in ckpt.glob("random_states_*")) == ["random_states_0.pkl", "random_states_1.pkl"]
    from silo.operators import load_operator

    assert load_operator(tmp_path / "op").kind == "cnn"
