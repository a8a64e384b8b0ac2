"""Interrupted training resumes bit-identically: SIGTERM at random moments, resumed each time.

    python -m wsss.benchmarks.interrupts --n 8

Trains a tiny CAM on tiny SynthVOC once without interruption, then again while a timer thread
sends SIGTERM to this process at random moments (signal handlers run in the main thread between
bytecodes, so one may land anywhere: in the forward pass, inside `optimizer.step()`, between it and
the step count). After each interrupt training resumes from the checkpoint with a fresh model,
optimizer and dataset. The final weights must equal the uninterrupted ones bit for bit. The model's
forward draws from torch's RNG (as dropout does), so a checkpoint that missed the RNG state fails too.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from wsss.methods.base import WSSSMethod
from wsss.train import CHECKPOINT, MODEL, TrainConfig, load_file, train


def build(root: Path) -> tuple[WSSSMethod, torch.utils.data.Dataset]:
    """A fresh tiny model (its initial weights are overwritten by the checkpoint when resuming) and dataset."""
    from wsss.data.transforms import train_transform
    from wsss.data.voc import VOCDataset
    from wsss.methods.base import build_method

    torch.manual_seed(0)
    method = build_method("cam", 8, "small", backbone_options={"norm": "gn", "widths": (8, 8, 16, 16)})
    forward = method.forward

    def noisy_forward(batch: dict[str, Any], progress: float) -> dict[str, torch.Tensor]:
        return forward({**batch, "image": batch["image"] + 0.05 * torch.randn_like(batch["image"])}, progress)

    method.forward = noisy_forward  # type: ignore[method-assign]
    return method, VOCDataset(root, "train", transform=train_transform(48), with_mask=False, cache=True)


def config(epochs: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=8, lr=2e-3, ckpt_every=1000, progress=False)


def train_interrupted(root: Path, run_dir: Path, cfg: TrainConfig, moments: list[float],
                      signum: int = signal.SIGTERM) -> list[int]:
    """Train into `run_dir`, sending `signum` to this process `moments[i]` seconds after the first
    optimizer step of the i-th piece and resuming after each interrupt, until the run is finished;
    returns the step each interrupt stopped at. A signal that comes after `train` returned (the
    piece finished first) is ignored."""
    previous = signal.signal(signum, lambda *_: None)
    stopped_at: list[int] = []
    timer: threading.Timer | None = None

    def arm(*_: Any) -> None:  # the clock starts once training is under way, with its handlers in place
        if timer is not None and timer.ident is None:
            timer.start()

    hook = register_optimizer_step_pre_hook(arm)
    try:
        for delay in [*moments, None]:
            timer = threading.Timer(delay, os.kill, (os.getpid(), signum)) if delay is not None else None
            try:
                train(*build(root), cfg, run_dir)
            except KeyboardInterrupt:
                stopped_at.append(int(load_file(run_dir / CHECKPOINT)["step"]))
            finally:
                if timer is not None and timer.ident is not None:
                    timer.cancel()
                    timer.join()
            if (run_dir / MODEL).is_file():
                break
    finally:
        hook.remove()
        signal.signal(signum, previous)
    return stopped_at


def differing(a_dir: Path, b_dir: Path) -> list[str]:
    """Names of the tensors of two runs' final models that are not bit-identical."""
    a, b = load_file(a_dir / MODEL), load_file(b_dir / MODEL)
    return sorted(k for k in a.keys() | b.keys() if k not in a or k not in b or not torch.equal(a[k], b[k]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8, help="interrupts")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="of the random moments")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from wsss.data import synthvoc

    with tempfile.TemporaryDirectory(prefix="wsss-interrupts-") as tmp:
        root = synthvoc.generate(Path(tmp) / "synthvoc", preset="tiny", seed=0, progress=False)
        cfg = config(args.epochs)
        t0 = time.perf_counter()
        reference = train(*build(root), cfg, Path(tmp) / "reference")
        reference_s = time.perf_counter() - t0
        # n random moments of the reference's training time, as delays from one piece to the next.
        rng = random.Random(args.seed)
        points = sorted(rng.uniform(0.0, 0.95 * reference.seconds) for _ in range(args.n))
        moments = [b - a for a, b in zip([0.0, *points], points)]
        t0 = time.perf_counter()
        stopped_at = train_interrupted(root, Path(tmp) / "interrupted", cfg, moments)
        interrupted_s = time.perf_counter() - t0
        bad = differing(Path(tmp) / "reference", Path(tmp) / "interrupted")
    print(f"uninterrupted: {reference.steps} steps in {reference_s:.1f} s")
    print(f"interrupted: {len(stopped_at)} SIGTERMs landed, stopping at steps {stopped_at} "
          f"(moments {', '.join(f'{m:.2f}' for m in moments)} s into each piece); resumed each time, "
          f"{interrupted_s:.1f} s in all")
    print("final weights bit-identical:", "yes" if not bad else f"NO ({len(bad)} tensors differ, e.g. {bad[:3]})")
    if bad:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
