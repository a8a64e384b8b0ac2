"""The shared training loop: resume after a kill, interrupt handling, and torchrun/DDP equivalence."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from wsss.train import CHECKPOINT, LOG, MODEL, read_log

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
    saved = torch.load(killed / CHECKPOINT, weights_only=False)
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
    saved = torch.load(run / CHECKPOINT, weights_only=False)["step"]
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
