"""`silo bench`: the quick run writes valid JSON with every method and reference cost; ratios and target
checks; the SD 1.5 architecture matches its published parameter counts. The full SD 1.5 bench is `slow`."""

import gc
import json

import pytest
import torch

from silo.cli import main
from silo.evaluation.bench import REFERENCE_OPS, add_ratios, bench_methods, check_targets, paired_reference
from silo.evaluation.memory import PeakMemory

pytestmark = pytest.mark.usefixtures("one_thread")


def test_quick_bench_writes_valid_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--output", str(out), "--no-progress"]) == 0
    data = json.loads(out.read_text())
    assert data["schema"] == "silo.bench/1" and data["complete"] and "random weights" in data["note"]
    (run,) = data["runs"]
    assert (run["prior"], run["size"], run["dtype"]) == ("tiny-random", 32, "float32")
    assert set(run["reference"]) == set(REFERENCE_OPS)
    assert set(run["methods"]) == set(bench_methods())
    for name, m in run["methods"].items():
        assert m["seconds_per_step"] > 0 and len(m["step_seconds"]) == 2, name
        assert m["peak_memory_bytes"] > 0 and m["ratio_to_unet_forward"] > 0
        pair = m["paired_reference"]  # the reference op ran once after every step
        assert pair["op"] == paired_reference(name) and len(pair["all_seconds"]) == 2 and pair["seconds"] > 0
        assert m["ratio_to_paired_reference"] == pytest.approx(m["step_seconds"][1] / pair["all_seconds"][1])
    assert run["methods"]["ldps"]["ratio_to_ldps"] == 1.0 and run["methods"]["ldps"]["paired_ratio_to_ldps"] == 1.0
    assert run["methods"]["silo_x0[cnn]"]["paired_ratio_to_ldps"] is None  # paired with another op than LDPS
    assert 0 < data["runtime_memory_bytes"] == run["runtime_memory_bytes"] < run["methods"]["ldps"]["peak_memory_bytes"]
    assert run["methods"]["ldps"]["model_memory_bytes"] == (
        run["methods"]["ldps"]["peak_memory_bytes"] - data["runtime_memory_bytes"]
    )
    assert data["targets"] == []  # targets concern SD 1.5 at 512 px only
    assert "silo[cnn]" in capsys.readouterr().out
    assert main(["bench", "--quick", "--output", str(out)]) == 2  # never overwritten


def test_ratios_and_targets():
    run = {
        "prior": "sd15",
        "size": 512,
        "dtype": "float32",
        "reference": {"unet_forward": {"seconds": 10.0}, "unet_forward_backward": {"seconds": 20.0}},
        "methods": {
            "ldps": {"seconds_per_step": 80.0, "peak_memory_bytes": 12},
            "silo[cnn]": {"seconds_per_step": 21.0, "peak_memory_bytes": 7},
            "silo_x0[cnn]": {"seconds_per_step": 11.0, "peak_memory_bytes": 4},
            "psld": {"error": "out of memory"},
        },
        "runtime_memory_bytes": 2,
        "runtime_memory_kind": "cpu_rss_before_models",
    }
    add_ratios(run)
    silo_cnn = run["methods"]["silo[cnn]"]
    assert silo_cnn["ratio_to_ldps"] == pytest.approx(21 / 80)
    assert run["methods"]["silo_x0[cnn]"]["ratio_to_unet_forward"] == pytest.approx(1.1)
    assert silo_cnn["peak_memory_ratio_to_ldps"] == pytest.approx(7 / 12)
    assert (silo_cnn["model_memory_bytes"], silo_cnn["model_memory_ratio_to_ldps"]) == (5, pytest.approx(5 / 10))
    results = {t["target"]: t["passed"] for t in check_targets([run])}
    # 21/80 > 1/4: not 4x faster; 7/12 of the process peak, but 5/10 without the runtime both share
    assert list(results.values()) == [False, True, False, True, True, None]  # no silo_daps[cnn] run: not checked
    assert check_targets([{**run, "size": 256}]) == []
    # paired with a reference run between its own steps: these ratios win over the drifting reference block
    paired = {**run, "methods": {k: dict(v) for k, v in run["methods"].items()}}
    for name, ratio in (("silo[cnn]", 1.05), ("ldps", 4.5)):
        paired["methods"][name].update(
            paired_reference={"op": "unet_forward_backward"}, ratio_to_paired_reference=ratio
        )
    paired["methods"]["silo_x0[cnn]"].update(paired_reference={"op": "unet_forward"}, ratio_to_paired_reference=1.2)
    paired["methods"]["silo_daps[cnn]"] = {
        "paired_reference": {"op": "unet_forward"},
        "ratio_to_paired_reference": 1.15,
    }
    add_ratios(paired)
    assert paired["methods"]["silo[cnn]"]["paired_ratio_to_ldps"] == pytest.approx(1.05 / 4.5)
    targets = check_targets([paired])
    assert [t["value"] for t in targets][:2] == [pytest.approx(1.05 / 4.5), 1.05] and targets[4]["value"] == 1.2
    assert [t["passed"] for t in targets] == [True, True, False, True, False, True]
    assert [t["paired"] for t in targets] == [True, True, None, None, True, True]
    assert [t["paired"] for t in check_targets([run])] == [False, False, None, None, False, False]
    cuda = {
        **run,
        "methods": {k: dict(v) for k, v in run["methods"].items()},
        "runtime_memory_bytes": 0,
        "runtime_memory_kind": "none: CUDA's counter holds tensors only",
    }
    add_ratios(cuda)  # no CPU baseline: no second memory figure, and its target is not checked
    assert cuda["methods"]["silo[cnn]"]["model_memory_ratio_to_ldps"] is None
    assert [t["passed"] for t in check_targets([cuda])] == [False, True, False, None, True, None]


def test_peak_memory_leaves_out_a_paused_block():
    """What runs inside ``paused()`` (a reference op timed beside a method) is not the method's peak. A 64 MiB
    tensor is freed inside the pause in the first block and still held when the second block ends (where the
    peak is sampled once more), so neither depends on the polling thread's timing."""
    with PeakMemory("cpu") as mem:
        with mem.paused():
            big = torch.ones(64 * 2**20 // 4)  # touched, so resident
            del big
        gc.collect()
    paused_peak = mem.peak - mem.start
    with PeakMemory("cpu") as mem:
        big = torch.ones(64 * 2**20 // 4)
    del big
    assert mem.peak - mem.start > 48 * 2**20 > paused_peak


@pytest.fixture(scope="module")
def tiny_bench():
    from silo.evaluation.bench import load_bench_prior

    return load_bench_prior("tiny-random", torch.device("cpu"))


def test_paired_reference_time_stays_out_of_the_step(tiny_bench, monkeypatch):
    """On a fake clock that the reference op moves by 100 s and every reading by 1 ms: every reference run
    takes the 100 s, no step does (no wall time involved)."""
    from types import SimpleNamespace

    from silo.evaluation import bench

    clock = SimpleNamespace(now=0.0)

    def perf_counter() -> float:
        clock.now += 0.001
        return clock.now

    def reference() -> None:
        clock.now += 100.0

    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=perf_counter))
    monkeypatch.setattr(bench, "reference_fns", lambda bp, size: {op: reference for op in REFERENCE_OPS})
    m = bench.time_method(tiny_bench, "silo[cnn]", 32, warmup=1, repeats=1)
    assert len(m["step_seconds"]) == len(m["paired_reference"]["all_seconds"]) == 2
    assert all(r >= 100.0 for r in m["paired_reference"]["all_seconds"])
    assert all(0 < s < 1.0 for s in m["step_seconds"])


def test_a_failing_reference_keeps_the_methods_own_result(tiny_bench, monkeypatch):
    from silo.evaluation import bench

    def boom():
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(bench, "reference_fns", lambda bp, size: {op: boom for op in REFERENCE_OPS})
    m = bench.time_method(tiny_bench, "ldps", 32, warmup=1, repeats=1)
    assert m["seconds_per_step"] > 0 and m["peak_memory_bytes"] > 0
    assert m["paired_reference"] == {"op": "unet_forward_backward", "error": "out of memory (simulated)"}
    assert "ratio_to_paired_reference" not in m


def test_the_reference_runs_without_the_samplers_feature_hooks(tiny_bench):
    """The readout sampler collects UNet features through forward hooks; the paired op must not feed them."""
    from silo.evaluation.bench import reference_fns, without_forward_hooks
    from silo.operators.features import UNetFeatureHooks

    unet = tiny_bench.prior.unet
    with UNetFeatureHooks(unet) as hooks:
        with without_forward_hooks(unet):
            reference_fns(tiny_bench, 32)["unet_forward"]()
        assert hooks.features == []
        reference_fns(tiny_bench, 32)["unet_forward"]()  # the hooks are back
        assert len(hooks.features) > 0


def test_sd15_architecture_matches_the_published_parameter_counts():
    """Built on the meta device: shapes without memory or initialisation time."""
    from silo.evaluation.bench import sd15_prior

    meta = torch.device("meta")
    with meta:
        prior = sd15_prior(meta)
    assert sum(p.numel() for p in prior.unet.parameters()) == 859_520_964
    assert sum(p.numel() for p in prior.vae.parameters()) == 83_653_863
    assert (prior.latent_channels, prior.vae_scale, prior.size_multiple, prior.embedding_dim) == (4, 8, 64, 1280)
    assert (
        prior.scheduler.config.beta_schedule == "scaled_linear" and prior.scheduler.config.prediction_type == "epsilon"
    )


@pytest.mark.slow
def test_sd15_bench_256px(tmp_path):
    """Minutes on a CPU: the SD 1.5 architecture at 256 px, float32, every method."""
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "--prior",
                "sd15",
                "--sizes",
                "256",
                "--dtypes",
                "float32",
                "--repeats",
                "1",
                "--output",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    run = json.loads(out.read_text())["runs"][0]
    assert all("seconds_per_step" in m for m in run["methods"].values())
