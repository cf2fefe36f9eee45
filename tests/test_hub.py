"""Operators by Hub id, read from a Hugging Face cache laid out in a temporary HF_HOME (no network), and the Hub
model card `silo train-operator` writes beside model_card.json."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

from silo.cli import main
from silo.errors import SiloError
from silo.hub import model_card_text, resolve_operator, split_hub_id, write_model_card
from silo.models import shipped_root
from silo.operators import load_operator

pytestmark = pytest.mark.usefixtures("one_thread")

SHIPPED_OPS = shipped_root() / "operators"
REPO = "silo-test/silo-tiny-operators"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def lay_out_cache(hf_home: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """huggingface_hub's cache layout: ``hub/models--OWNER--NAME/{blobs,refs/main,snapshots/COMMIT/...}``, the
    snapshot's files being links to content-addressed blobs, as a real download leaves them."""
    root = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    (root / "blobs").mkdir()
    for name, source in files.items():
        data = source.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        target = root / "snapshots" / COMMIT / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(Path("../" * name.count("/") + "../../blobs") / blob.name)
    return root / "snapshots" / COMMIT


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A cache holding one repo with the shipped sr4 and jpeg CNN operators, one per subfolder; offline."""
    files = {f"{op}/{f.name}": f for op in ("sr4-cnn", "jpeg-cnn") for f in sorted((SHIPPED_OPS / op).iterdir())}
    snapshot = lay_out_cache(tmp_path / "hf", REPO, files)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return snapshot


def test_hub_ids_are_told_from_paths():
    assert split_hub_id("owner/name") == ("owner/name", None)
    assert split_hub_id("owner/name/sr4/cnn") == ("owner/name", "sr4/cnn")
    for not_an_id in ("./ops/sr4", "/abs/ops", "~/ops", "ops", "sr4=owner/name", "owner/../x", "own er/name"):
        assert split_hub_id(not_an_id) is None, not_an_id


def test_load_operator_by_hub_id_and_subfolder_from_the_cache_offline(hub):
    local = load_operator(SHIPPED_OPS / "sr4-cnn")
    remote = load_operator(f"{REPO}/sr4-cnn")
    assert resolve_operator(f"{REPO}/sr4-cnn") == hub / "sr4-cnn"
    assert resolve_operator(REPO, subfolder="jpeg-cnn") == hub / "jpeg-cnn"
    assert type(remote) is type(local) and remote.card == local.card and remote.card.recommended_eta is not None
    for (name, a), (_, b) in zip(sorted(local.state_dict().items()), sorted(remote.state_dict().items())):
        assert torch.equal(a, b), name


def test_restore_with_a_hub_operator_matches_the_same_operator_from_its_folder(hub, tmp_path):
    """`--operator OWNER/NAME/{task}`: the folder of each task in the repo; same pixels, settings and sources."""
    from silo.data.photos import load_example
    from silo.io.images import tensor_to_pil

    tensor_to_pil(load_example("astronaut", 64)).save(tmp_path / "photo.png")
    common = [str(tmp_path / "photo.png"), "--simulate", "--task", "sr4", "--no-progress", "--no-lpips"]
    assert main(["restore", *common, "--operator", f"{REPO}/{{task}}-cnn", "--output-dir", str(tmp_path / "hub")]) == 0
    assert main(["restore", *common, "--operator", str(SHIPPED_OPS / "sr4-cnn"), "--output-dir", str(tmp_path)]) == 0
    (a,), (b,) = sorted((tmp_path / "hub").glob("*.json")), sorted(tmp_path.glob("*.json"))
    log_a, log_b = json.loads(a.read_text()), json.loads(b.read_text())
    assert log_a["settings"] == log_b["settings"] and log_a["setting_sources"] == log_b["setting_sources"]
    assert log_a["setting_sources"]["eta"].startswith("operator card sr4-cnn")
    assert log_a["operator"]["fingerprint"] == log_b["operator"]["fingerprint"]
    assert np.array_equal(np.asarray(Image.open(a.with_suffix(".png"))), np.asarray(Image.open(b.with_suffix(".png"))))


def test_a_missing_hub_id_is_one_line_naming_it(hub, tmp_path, capsys):
    with pytest.raises(SiloError) as err:
        load_operator("silo-test/no-such-operator")
    text = str(err.value)
    assert "silo-test/no-such-operator" in text and "\n" not in text and "HF_HUB_OFFLINE=1" in text
    with pytest.raises(SiloError, match="has no folder sr16-cnn"):
        load_operator(f"{REPO}/sr16-cnn")

    capsys.readouterr()
    argv = "restore --simulate --example astronaut --task sr4 --no-progress --operator silo-test/no-such-operator"
    code = main([*argv.split(), "--output-dir", str(tmp_path / "out")])
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2
    assert len(err_lines) == 1 and "silo-test/no-such-operator" in err_lines[0], err_lines
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_repo_without_an_operator_is_refused(tmp_path, monkeypatch):
    lay_out_cache(
        tmp_path / "hf", "silo-test/not-an-operator", {"weights.bin": SHIPPED_OPS / "sr4-cnn" / "config.json"}
    )
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SiloError, match=r"silo-test/not-an-operator.*no config.json"):
        load_operator("silo-test/not-an-operator")


def test_model_card_metadata(tmp_path):
    card = json.loads((SHIPPED_OPS / "sr4-cnn" / "model_card.json").read_text())
    card.update(
        prior="stablediffusionapi/realistic-vision-v51", data={**card["data"], "source": str(tmp_path / "pics")}
    )
    folder = tmp_path / "sr4-op"
    folder.mkdir()
    path = write_model_card(folder, card)
    parsed = ModelCard.load(path)
    meta = parsed.data
    assert meta.library_name == "silo-restore" and meta.pipeline_tag == "image-to-image"
    assert meta.base_model == "stablediffusionapi/realistic-vision-v51"
    assert {"silo", "task-sr4", "operator-cnn"} <= set(meta.tags) and meta.metrics == [card["loss"]]
    assert meta.to_dict()["silo"]["task"] == "sr4" and meta.to_dict()["silo"]["data"] == "pics"
    (result,) = meta.eval_results
    assert result.metric_value == pytest.approx(card["final_validation_loss"]) and result.dataset_split == "validation"
    assert str(tmp_path) not in path.read_text()  # a local data folder is named, never its machine path
    assert "datasets" not in meta.to_dict()  # a local folder is no Hub dataset
    local = model_card_text({**card, "prior": str(tmp_path)}, "x")
    assert "base_model" not in local.split("---")[1]  # a local prior is no Hub model to link


def test_train_operator_writes_a_hub_model_card(tmp_path):
    from silo.testing import random_images, tiny_prior

    tiny_prior().save_pretrained(tmp_path / "prior")
    (tmp_path / "imgs").mkdir()
    for i in range(4):
        x = random_images(1, (40, 48), seed=i)[0]
        Image.fromarray(((x.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()).save(tmp_path / "imgs" / f"{i}.png")
    out = tmp_path / "op"
    options = "--task sr4 --crop-size 32 --max-steps 2 --batch-size 2 --validation-images 1 --num-workers 0 "
    options += "--report-to none --device cpu --no-progress"
    paths = ["--prior", str(tmp_path / "prior"), "--data", str(tmp_path / "imgs"), "--output-dir", str(out)]
    small = ["--operator-config", json.dumps({"channels": [8, 8, 8, 8]})]
    assert main(["train-operator", *options.split(), *paths, *small]) == 0
    card = json.loads((out / "model_card.json").read_text())
    meta = ModelCard.load(out / "README.md").data
    assert meta.library_name == "silo-restore" and "task-sr4" in meta.tags and meta.to_dict()["silo"]["steps"] == 2
    assert meta.eval_results[0].metric_value == pytest.approx(card["final_validation_loss"])
    assert str(tmp_path) not in (out / "README.md").read_text()
    # the folder as it would be uploaded loads back as an operator, from a cache laid out from it
    snapshot = lay_out_cache(tmp_path / "hf", "me/my-op", {p.name: p for p in out.iterdir() if p.is_file()})
    assert (snapshot / "README.md").is_file()
    shutil.rmtree(out)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(tmp_path / "hf"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        assert load_operator("me/my-op").card.task == "sr4"
