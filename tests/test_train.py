"""The shared training loop: resume after a kill, interrupt handling, and torchrun/DDP equivalence."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from wsss.train import CHECKPOINT, LOG, MODEL, load_file, read_log

# A tiny training script: GroupNorm makes the model independent of how the batch is split across
# processes, so one process and two must train the same weights.
SCRIPT = textwrap.dedent("""
    import sys, time
    import torch
    from wsss.data.transforms import train_transform
    from wsss.data.voc import VOCDataset
    from wsss.methods.base import build_method
    from wsss.train import TrainConfig, train

    root, run_dir, epochs, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    torch.manual_seed(0)
    torch.set_num_threads(1)
    method = build_method("cam", 8, "small", backbone_options={"norm": "gn", "widths": (8, 8, 16, 16)})
    if delay:  # slow each step down so a test can kill the run mid-way
        forward = method.forward
        method.forward = lambda *a, **k: (time.sleep(delay), forward(*a, **k))[1]
    ds = VOCDataset(root, "train", transform=train_transform(48), with_mask=False, cache=True)
    cfg = TrainConfig(epochs=epochs, batch_size=8, lr=2e-3, ckpt_every=3, progress=False)
    result = train(method, ds, cfg, run_dir)
    print("steps", result.steps, "resumed_from", result.resumed_from)
""")


@pytest.fixture()
def script(tmp_path: Path) -> Path:
    path = tmp_path / "train_script.py"
    path.write_text(SCRIPT)
    return path


def _run(script: Path, root: Path, run_dir: Path, epochs: int = 2, delay: float = 0.0) -> str:
    out = subprocess.run([sys.executable, str(script), str(root), str(run_dir), str(epochs), str(delay)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _wait_for(predicate, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not predicate():
        if time.time() - t0 > timeout:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_model(tiny_root: Path, script: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    _run(script, tiny_root, reference)
    ref_log = read_log(reference / LOG)
    total = ref_log[-1]["step"]  # 48 train images / 8 = 6 steps x 2 epochs

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_root), str(killed), "2", "0.15"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Kill (no chance to save) once a periodic checkpoint exists and training went past it.
    _wait_for(lambda: (killed / CHECKPOINT).exists() and (killed / LOG).exists() and len(read_log(killed / LOG)) >= 5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / MODEL).exists(), "the run finished before it could be killed"
    saved = torch.load(killed / CHECKPOINT, weights_only=True)  # tensors, dicts and numbers only
    steps_before = saved["step"]
    assert 0 < steps_before < total
    assert saved["seconds"] >= 0.15 * steps_before  # each step sleeps 0.15 s

    out = _run(script, tiny_root, killed)
    assert f"steps {total} resumed_from {steps_before}" in out
    summary = json.loads((killed / "train_summary.json").read_text())
    assert summary["seconds"] > saved["seconds"], "the reported training time forgot the killed piece"
    log = read_log(killed / LOG)
    assert [r["step"] for r in log] == list(range(1, total + 1)), "the loss curve has a gap or repeated steps"
    # The data a step sees depends only on (seed, epoch, step): the resumed run reproduces the reference.
    for mine, ref in zip(log, ref_log):
        assert mine["loss"] == pytest.approx(ref["loss"], rel=1e-4, abs=1e-6)
    a = torch.load(killed / MODEL, weights_only=True)
    b = torch.load(reference / MODEL, weights_only=True)
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_at_the_current_step(tiny_root: Path, script: Path, tmp_path: Path) -> None:
    run = tmp_path / "term"
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_root), str(run), "2", "0.15"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (run / LOG).exists() and len(read_log(run / LOG)) >= 4)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "checkpoint saved" in err
    saved = torch.load(run / CHECKPOINT, weights_only=True)["step"]
    assert saved == read_log(run / LOG)[-1]["step"], "the interrupt checkpoint lags the last logged step"


@pytest.mark.slow
def test_torchrun_two_gloo_processes_train_the_single_process_model(tiny_root: Path, script: Path,
                                                                      tmp_path: Path) -> None:
    single = tmp_path / "single"
    _run(script, tiny_root, single, epochs=1)
    ddp = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", str(script), str(tiny_root),
                          str(ddp), "1", "0"], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (ddp / MODEL).is_file()
    a = torch.load(ddp / MODEL, weights_only=True)
    b = torch.load(single / MODEL, weights_only=True)
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    # Only rank 0 writes: one log, one row per step.
    assert [r["step"] for r in read_log(ddp / LOG)] == [r["step"] for r in read_log(single / LOG)]
    summary = json.loads((ddp / "train_summary.json").read_text())
    assert summary["steps"] == read_log(single / LOG)[-1]["step"]


def test_a_second_process_waits_for_the_run_lock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two notebooks that need the same run must not train into one folder at once."""
    from wsss.io import exclusive

    lock = tmp_path / ".train.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom wsss.io import exclusive\n"
         "with exclusive(sys.argv[1], 'training'):\n    print('held', flush=True)\n    time.sleep(1.5)", str(lock)],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    t0 = time.perf_counter()
    with exclusive(lock, "training"):
        waited = time.perf_counter() - t0
    assert holder.wait(timeout=30) == 0
    assert waited > 0.5
    assert "waiting: another process is busy with training" in capsys.readouterr().out
    t0 = time.perf_counter()
    with exclusive(lock, "training"):  # free again: no wait
        assert time.perf_counter() - t0 < 0.5


def test_method_options_at_their_defaults_name_the_same_run() -> None:
    """A notebook that spells out a method's defaults must reuse the run of one that does not."""
    from wsss.experiment import ExperimentConfig

    plain = ExperimentConfig.for_preset("tiny", method="vwl")
    spelled = ExperimentConfig.for_preset("tiny", method="vwl", method_options={"num_words": 256, "hspp": True})
    other = ExperimentConfig.for_preset("tiny", method="vwl", method_options={"num_words": 128, "hspp": True})
    assert spelled.config_hash() == plain.config_hash()
    assert other.config_hash() != plain.config_hash()
    assert other.config_hash() == ExperimentConfig.for_preset("tiny", method="vwl",
                                                              method_options={"num_words": 128}).config_hash()
    # Defaults of a base class the method forwards **options to count too (SANCE -> contour base).
    sance = ExperimentConfig.for_preset("tiny", method="sance")
    assert ExperimentConfig.for_preset("tiny", method="sance", method_options={
        "detach_contour": True, "loss_radius": 10.0}).config_hash() == sance.config_hash()
    assert ExperimentConfig.for_preset("tiny", method="sance", method_options={
        "detach_contour": False}).config_hash() != sance.config_hash()


def test_training_under_no_grad_still_learns(tiny_root: Path, tmp_path: Path) -> None:
    """An evaluation wrapped in torch.no_grad() that finds its run untrained trains it first."""
    from wsss.data.transforms import train_transform
    from wsss.data.voc import VOCDataset
    from wsss.methods.base import build_method
    from wsss.train import TrainConfig, train

    torch.manual_seed(0)
    method = build_method("cam", 8, "small", backbone_options={"norm": "gn", "widths": (8, 8, 16, 16)})
    before = [p.detach().clone() for p in method.parameters()]
    ds = VOCDataset(tiny_root, "train", transform=train_transform(48), with_mask=False, cache=True)
    with torch.no_grad():
        result = train(method, ds, TrainConfig(epochs=1, batch_size=8, lr=2e-3, progress=False), tmp_path / "run")
    assert result.steps > 0
    assert any(not torch.equal(p, b) for p, b in zip(method.parameters(), before))
    # The first batch is read from disk, in the loop's process: a stall the run records.
    assert 0 < result.data_wait_seconds < result.seconds


def _signal_at_update(update: int, start: int, pre: list[int], post: list[int]) -> list:
    """Optimizer hooks that send `pre` signals just before and `post` signals just after the
    `update`-th optimizer step of the run, in a piece that resumed from step `start`."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    calls = {"pre": 0, "post": 0}

    def hook(kind: str, signums: list[int]):
        def fire(*_) -> None:
            calls[kind] += 1
            if start + calls[kind] == update:
                for signum in signums:
                    os.kill(os.getpid(), signum)
        return fire

    return [register_optimizer_step_pre_hook(hook("pre", pre)), register_optimizer_step_post_hook(hook("post", post))]


@pytest.mark.slow
def test_interrupts_stop_between_steps_and_resume_bit_identically(tiny_root: Path, tmp_path: Path) -> None:
    """A signal takes effect once its step is complete, however deep in the step it lands; a run
    interrupted and resumed again and again ends with exactly the weights of an uninterrupted one.
    The model draws from torch's RNG in every step, so a checkpoint must hold the RNG state too."""
    from wsss.benchmarks.interrupts import build, config, differing, train_interrupted
    from wsss.train import train

    cfg = dataclasses.replace(config(epochs=3), ckpt_every=4)  # 18 steps
    sigint_handler = signal.getsignal(signal.SIGINT)  # SIG_IGN in a job started in the background
    train(*build(tiny_root), cfg, tmp_path / "reference")
    run = tmp_path / "interrupted"
    # (update hit, signals before it, signals after it, message, step of the checkpoint left)
    pieces = [
        (3, [], [signal.SIGTERM], "interrupted at step 3/18", 3),  # between optimizer.step() and the step count
        (6, [signal.SIGINT], [], "interrupted at step 6/18", 6),  # Ctrl-C / Jupyter, inside optimizer.step()
        (10, [signal.SIGINT], [signal.SIGINT], "second interrupt", 8),  # at once: the periodic step-8 one stays
    ]
    for update, pre, post, message, saved in pieces:
        start = load_file(run / CHECKPOINT)["step"] if (run / CHECKPOINT).exists() else 0
        hooks = _signal_at_update(update, start, pre, post)
        try:
            with pytest.raises(KeyboardInterrupt, match=message):
                train(*build(tiny_root), cfg, run)
        finally:
            for h in hooks:
                h.remove()
        assert load_file(run / CHECKPOINT)["step"] == saved
    assert signal.getsignal(signal.SIGINT) is sigint_handler, "the SIGINT handler was not restored"
    # Then SIGTERMs from a timer thread at random moments (the benchmark's function, fewer of them).
    stopped_at = train_interrupted(tiny_root, run, cfg, [random.uniform(0.0, 0.04) for _ in range(2)])
    # A signal may land after the last update too (while the model is saved): that piece stops at step 18
    # with a checkpoint, and the resume only writes the model.
    assert stopped_at and all(8 <= s <= 18 for s in stopped_at)
    assert differing(tmp_path / "reference", run) == [], "the resumed run's weights differ from the uninterrupted one's"
    assert [r["step"] for r in read_log(run / LOG)] == list(range(1, 19))


class _NaNLabel(torch.utils.data.Dataset):
    """A dataset with one NaN in one image's label vector."""

    def __init__(self, dataset: torch.utils.data.Dataset, index: int) -> None:
        self.dataset, self.index = dataset, index

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict:
        sample = self.dataset[index]
        if index == self.index:
            sample["label"] = sample["label"].clone()
            sample["label"][0] = math.nan
        return sample


def test_a_non_finite_loss_stops_training_before_the_weights(tiny_root: Path, tmp_path: Path) -> None:
    from wsss.benchmarks.interrupts import build
    from wsss.train import DistInfo, GlobalBatchSampler, NonFiniteLossError, TrainConfig, train

    method, dataset = build(tiny_root)
    index = list(GlobalBatchSampler(len(dataset), 8, 0, 0, 0, DistInfo()))[3][0]  # in the 4th batch
    cfg = TrainConfig(epochs=1, batch_size=8, lr=2e-3, ckpt_every=1, progress=False)
    with pytest.raises(NonFiniteLossError, match=rf"step 4: non-finite loss terms \['loss'.*{dataset.ids[index]}"):
        train(method, _NaNLabel(dataset, index), cfg, tmp_path / "run")
    saved = load_file(tmp_path / "run" / CHECKPOINT)
    assert saved["step"] == 3
    assert all(t.isfinite().all() for t in saved["model"].values() if t.is_floating_point())
    assert all(p.isfinite().all() for p in method.parameters()), "the bad step reached the weights"
    assert not (tmp_path / "run" / MODEL).exists()


@pytest.mark.parametrize("setting", [dict(epochs=0), dict(max_steps=0), dict(batch_size=0), dict(lr=0.0),
                                     dict(lr=math.nan), dict(weight_decay=-1e-4), dict(ckpt_every=0),
                                     dict(log_every=0), dict(optimizer="adam"), dict(poly_power=-1.0),
                                     dict(num_workers=-1), dict(momentum=1.0), dict(epochs="10")])
def test_an_invalid_train_config_is_rejected_when_built(setting: dict) -> None:
    from wsss.train import TrainConfig

    (name, value), = setting.items()
    with pytest.raises(ValueError, match=rf"TrainConfig: {name} must be .*, got {value!r}"):
        TrainConfig(**setting)


def test_a_preset_with_an_invalid_override_is_rejected_before_a_run_exists() -> None:
    from wsss.experiment import ExperimentConfig

    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        ExperimentConfig.for_preset("tiny", method="cam", epochs=0)


def test_stale_temporary_files_are_removed_and_a_damaged_checkpoint_is_named(tiny_root: Path, tmp_path: Path) -> None:
    from wsss.benchmarks.interrupts import build
    from wsss.train import DamagedFileError, TrainConfig, load_model, train

    cfg = TrainConfig(max_steps=2, batch_size=8, lr=2e-3, ckpt_every=1, progress=False)
    run = tmp_path / "run"
    train(*build(tiny_root), dataclasses.replace(cfg, max_steps=1), run)  # a checkpoint of step 1
    (run / MODEL).unlink()  # as if killed before the end
    stale = [run / ".checkpoint.pt.k1ll3d.pt", run / ".model.pt.x9z2ab.pt"]  # what a SIGKILL mid-save leaves
    for path in stale:
        path.write_bytes(b"partial")
    ckpt = (run / CHECKPOINT).read_bytes()
    (run / CHECKPOINT).write_bytes(ckpt[:len(ckpt) // 2])  # cut short, e.g. by a full disk
    with pytest.raises(DamagedFileError, match=rf"{CHECKPOINT} cannot be read .*delete it to restart training"):
        train(*build(tiny_root), cfg, run)
    assert not any(path.exists() for path in stale)
    (run / CHECKPOINT).unlink()
    assert train(*build(tiny_root), cfg, run).steps == 2
    model = (run / MODEL).read_bytes()
    (run / MODEL).write_bytes(model[:100])
    with pytest.raises(DamagedFileError, match=rf"{MODEL} cannot be read"):
        load_model(build(tiny_root)[0], run)


def test_presets_record_the_precision_they_train_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 autocast is chosen when the config is built (so the run's hash says which), only where it
    is fast; the tests' preset stays fp32 on every CPU, and an explicit choice is kept."""
    from wsss import experiment
    from wsss.experiment import ExperimentConfig

    for fast in (True, False):
        monkeypatch.setattr(experiment, "fast_bf16", lambda device, fast=fast: fast)
        quick = ExperimentConfig.for_preset("quick", device="cpu")
        assert quick.train.amp is fast
        assert ExperimentConfig.for_preset("tiny").train.amp is False
        assert ExperimentConfig.for_preset("quick", amp=False).train.amp is False
    fp32, bf16 = (ExperimentConfig.for_preset("quick", amp=amp) for amp in (False, True))
    assert fp32.config_hash() != bf16.config_hash()


def test_bf16_is_chosen_on_cpus_with_amx_or_avx512_bf16_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from wsss.train import fast_bf16

    for amx, avx512_bf16 in ((False, False), (True, False), (False, True), (True, True)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        assert fast_bf16(torch.device("cpu")) is (amx or avx512_bf16)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")  # a torch without the probe: no bf16 from it
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert fast_bf16(torch.device("cpu")) is False
    assert fast_bf16(torch.device("cuda")) is True


def test_bf16_inference_returns_fp32_maps_close_to_fp32_ones() -> None:
    from wsss.inference import in_bf16

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3, padding=1))
    images = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        exact, fast = net(images), in_bf16(net, "cpu")(images)
    assert fast.dtype == torch.float32
    assert not torch.equal(fast, exact)  # it did run in bf16
    assert torch.allclose(fast, exact, atol=0.05 * exact.abs().max().item())


def test_the_training_benchmark_times_the_final_network_too() -> None:
    """`wsss.benchmarks.train` measures the network `wsss ceiling` trains (on random label maps), and
    says which backbones it has one on rather than timing another network."""
    from wsss.benchmarks.train import FINAL, bench, build
    from wsss.scale import ScalePolicy
    from wsss.stages.final import SegmentationNet

    net = build(FINAL, 3, "small", ScalePolicy(32))
    assert isinstance(net, SegmentationNet) and net.model == "small_deeplabv3plus"
    result = bench(FINAL, "small", size=32, batch=2, steps=1, warmup=0, device="cpu", amp=False, num_classes=3)
    assert math.isfinite(result["images_per_s"]) and result["images_per_s"] > 0
    with pytest.raises(ValueError, match="no model on backbone 'resnet18'"):
        build(FINAL, 3, "resnet18", ScalePolicy(32))


@pytest.mark.slow
def test_the_pipeline_benchmark_times_every_cam_stage_on_files(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m wsss.benchmarks.pipeline` on a cut of the full preset (VOC's image shapes): a row
    per stage with its images, a loader wait within its time, and no run left behind."""
    import functools
    import json
    import tempfile
    import types

    from wsss.benchmarks import pipeline
    from wsss.benchmarks.pipeline import main

    # The benchmark's temporary run goes to a folder of this test's own (another test session may
    # run a benchmark in /tmp), set for the benchmark alone: moving the process's temp folder deep
    # under tmp_path would push multiprocessing's socket paths past their 108-byte limit, and the
    # data loader's workers would hang.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(pipeline, "tempfile", types.SimpleNamespace(
        TemporaryDirectory=functools.partial(tempfile.TemporaryDirectory, dir=scratch)))
    out = tmp_path / "pipeline.json"
    main(["--device", "cpu", "--backbone", "small", "--train-images", "8", "--val-images", "2", "--batch", "8",
          "--crop", "64", "--workers", "1", "--amp", "off", "--quiet", "--json", str(out)])
    result = json.loads(out.read_text())
    stages = result["stages"]
    assert [r["images"] for r in stages] == [8, 8, 8, 2, 2]
    for r in stages:
        assert r["seconds"] > 0 and r["images_per_s"] > 0 and r["peak_rss_mb"] > 0
        if r["loader_wait_s"] is not None:
            assert 0 < r["loader_wait_s"] < r["seconds"]
    assert [r["loader_wait_s"] is None for r in stages] == [False, False, True, False, True]
    assert abs(result["cam_stage_s"] - sum(r["seconds"] for r in stages)) < 1e-6 and 0 <= result["val_miou"] <= 1
    assert capsys.readouterr().out.count("\n| ") == 1 + len(stages)  # the header and a row per stage
    assert list(scratch.iterdir()) == []
    with pytest.raises(SystemExit, match="at least 8"):
        main(["--train-images", "4", "--batch", "8"])
