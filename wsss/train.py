"""The one training loop every method uses.

Same code on CUDA (mixed precision) and CPU (bf16 autocast too where the CPU has native bf16, see
`fast_bf16`), channels_last on both (`to_device`); unchanged under `torchrun`
(DistributedDataParallel, each rank takes its share of every global batch, only rank 0 writes).
The data a step sees depends only on (seed, epoch, step), so a resumed run continues exactly where
the killed one stopped, and N processes see the same global batches as one process.

Files in `run_dir`: `checkpoint.pt` (atomic, every `ckpt_every` steps and on interrupt),
`train_log.csv` (one row per logged step), `model.pt` and `train_summary.json` when finished.

Ctrl-C, Jupyter's interrupt (SIGINT) and a scheduler's SIGTERM take effect between steps: the loop
saves a checkpoint of the last complete step and raises KeyboardInterrupt; training again resumes
bit-identically. A second SIGINT stops at once, without saving. A non-finite loss stops training
before it reaches the weights (NonFiniteLossError), keeping the last good checkpoint.
"""
from __future__ import annotations

import csv
import io
import os
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from wsss.progress import DATA_WAIT, tqdm, waited

from wsss.io import atomic_path, exclusive, write_json, write_text
from wsss.methods.base import WSSSMethod

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
LOG = "train_log.csv"
SUMMARY = "train_summary.json"


# TrainConfig fields that change no result (so no run's hash): progress output, checkpoint cadence and
# the memory layout (NHWC changes results only by float rounding, as another CPU does).
RESULT_NEUTRAL_KEYS: tuple[str, ...] = ("progress", "num_workers", "ckpt_every", "log_every", "channels_last")


@dataclass
class TrainConfig:
    epochs: int = 10
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 16  # global batch, split across processes
    optimizer: str = "adamw"  # "adamw" for from-scratch CPU nets; "sgd" is IRNet's recipe for ImageNet weights
    lr: float = 2e-3
    new_layer_lr_mult: float = 10.0
    weight_decay: float = 1e-4
    momentum: float = 0.9
    poly_power: float = 0.9
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"
    amp: bool | None = None  # bf16 autocast; None: on for CUDA (ExperimentConfig.for_preset: where `fast_bf16`)
    channels_last: bool = True  # conv weights and images in NHWC (`to_device`)
    ckpt_every: int = 200
    log_every: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        # Reject a bad recipe when it is built, before a run folder is named after it: epochs=0
        # would "finish" an untrained model, batch_size=0 divide by zero much later.
        rules: list[tuple[str, str, Callable[[Any], bool]]] = [
            ("epochs", ">= 1", lambda v: v >= 1),
            ("max_steps", "None or >= 1", lambda v: v is None or v >= 1),
            ("batch_size", ">= 1", lambda v: v >= 1),
            ("optimizer", "'sgd' or 'adamw'", lambda v: v in ("sgd", "adamw")),
            ("lr", "> 0", lambda v: v > 0),
            ("weight_decay", ">= 0", lambda v: v >= 0),
            ("momentum", "in [0, 1)", lambda v: 0 <= v < 1),
            ("poly_power", ">= 0", lambda v: v >= 0),
            ("num_workers", ">= 0", lambda v: v >= 0),
            ("ckpt_every", ">= 1", lambda v: v >= 1),
            ("log_every", ">= 1", lambda v: v >= 1),
        ]
        for name, rule, ok in rules:
            value = getattr(self, name)
            try:
                valid = ok(value)
            except TypeError:  # e.g. epochs="10" or None
                valid = False
            if not valid:
                raise ValueError(f"TrainConfig: {name} must be {rule}, got {value!r}")


def split_train_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Settings given flat, as notebooks pass them: (TrainConfig keys, the others), None values
    dropped so that a parameter left at None means "the preset's default"."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    train_keys = {f.name for f in fields(TrainConfig)}
    return {k: v for k, v in overrides.items() if k in train_keys}, {k: v for k, v in overrides.items()
                                                                      if k not in train_keys}


@dataclass
class TrainResult:
    steps: int
    seconds: float  # training time of the whole run, summed over resumed pieces
    images_per_s: float
    last_losses: dict[str, float] = field(default_factory=dict)
    resumed_from: int = 0
    data_wait_seconds: float = 0.0  # of this piece: the loop waiting for the data loader's next batch


# ----------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun (RANK/WORLD_SIZE set); else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def device_named(name: str) -> torch.device:
    """"auto": CUDA when present, else the CPU; any other name as torch spells it."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name)


# CPU features with native bf16 arithmetic, as torch.cpu's probes name them: AMX tiles (recent
# Xeons) and AVX-512 BF16 (AMD Zen 4 and later, Xeons since Cooper Lake).
_BF16_CPU_PROBES = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast speeds `device` up: CUDA, and CPUs with native bf16 arithmetic, where
    oneDNN runs bf16 convolutions faster than fp32. Measured with `wsss.benchmarks.train` (96 px,
    batch 16, one thread): AMX, CAM's model 1.8-2x, the training loop 1.3x; AVX-512 BF16 on a 2-core
    AMD EPYC, CAM 1.61x, the final network 1.44x, every method 1.14-1.79x (1.0-1.71x on two
    threads). CPUs without either emulate bf16, slower than fp32."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in _BF16_CPU_PROBES)


def autocast_enabled(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether `train` runs `cfg` in bf16 autocast on `device` (`cfg.amp`; None: on CUDA only)."""
    return cfg.amp if cfg.amp is not None else device.type == "cuda"


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """The device of this process: `device_named(name)`, on this rank's GPU under torchrun."""
    device = device_named(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


class GlobalBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Yields this rank's share of each global batch of an epoch, from step `start` on.

    The permutation depends on (seed, epoch) only: every rank agrees on it, and a resumed run
    sees the batches the interrupted one would have seen.
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start: int, info: DistInfo) -> None:
        if batch_size % info.world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by {info.world_size} processes")
        self.n, self.batch_size, self.seed, self.epoch, self.start, self.info = n, batch_size, seed, epoch, start, info

    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size

    def __len__(self) -> int:
        return self.steps_per_epoch() - self.start

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        for step in range(self.start, self.steps_per_epoch()):
            batch = perm[step * self.batch_size:(step + 1) * self.batch_size]
            yield batch[self.info.rank::self.info.world_size]


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


# ----------------------------------------------------------------------------- checkpoint & log


def poly_lr(base: float, step: int, total: int, power: float) -> float:
    return base * (1.0 - step / max(total, 1)) ** power


def build_optimizer(method: WSSSMethod, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = []
    for group in method.param_groups():
        mult = cfg.new_layer_lr_mult if group["lr_mult"] is None else group["lr_mult"]
        if group["params"]:
            groups.append({"params": group["params"], "lr_mult": mult, "lr": cfg.lr * mult, "name": group["name"]})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)  # TrainConfig allows no other


def save_checkpoint(path: Path, method: WSSSMethod, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler | None, step: int, cfg: TrainConfig, seconds: float = 0.0) -> None:
    """Everything the steps after `step` depend on (the data depends only on (seed, epoch, step)),
    as tensors, dicts and numbers that `torch.load(weights_only=True)` reads. `seconds`: training
    time up to `step`, summed over every resumed piece of the run."""
    state = {
        "seconds": seconds,
        "model": method.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "step": step,
        "config": asdict(cfg),
        "torch_rng": torch.get_rng_state(),  # dropout, random sampling inside a method
        "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


class DamagedFileError(RuntimeError):
    """A checkpoint or model file that cannot be read (cut short by a kill, a full disk, a bad copy)."""


def load_file(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load` of a file this module wrote (weights only: no code runs), with its path and the
    way out in the error when the file is damaged."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a torn file raises EOFError, UnpicklingError, RuntimeError, ...
        remedy = ("delete it to restart training from step 0" if path.name == CHECKPOINT
                  else f"delete it and train again (which writes it anew from {CHECKPOINT})")
        raise DamagedFileError(f"{path} cannot be read ({type(exc).__name__}: {exc}); {remedy}, or restore it "
                               "from a copy") from exc


def load_model(method: WSSSMethod, run_dir: str | os.PathLike, map_location: str | torch.device = "cpu") -> WSSSMethod:
    """Load the finished model of a run (or its latest checkpoint when training was cut short)."""
    run_dir = Path(run_dir)
    if (run_dir / MODEL).is_file():
        state = load_file(run_dir / MODEL, map_location)
    elif (run_dir / CHECKPOINT).is_file():
        state = load_file(run_dir / CHECKPOINT, map_location)["model"]
    else:
        raise FileNotFoundError(f"{run_dir} holds neither {MODEL} nor {CHECKPOINT}: train first")
    method.load_state_dict(state)
    return method


class LossLog:
    """Append-only CSV of per-step losses that a notebook can plot; truncated to the checkpoint
    on resume so the curve has neither gaps nor duplicated steps."""

    def __init__(self, path: Path, resume_step: int, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        self.fields: list[str] | None = None
        if not enabled:
            return
        rows = read_log(path) if path.is_file() and resume_step > 0 else []
        rows = [r for r in rows if r["step"] <= resume_step]
        if rows:
            self.fields = list(rows[0])
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(rows)
            write_text(path, buf.getvalue())
        elif path.exists():
            path.unlink()

    def write(self, row: dict[str, float]) -> None:
        if not self.enabled:
            return
        new_file = self.fields is None
        if new_file:
            self.fields = list(row)
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new_file:
                writer.writeheader()
            writer.writerow(row)


def read_log(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a train_log.csv as dicts of floats (`step` as int); a torn last line is dropped."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                parsed = {k: float(v) for k, v in row.items() if k is not None}
            except (TypeError, ValueError):
                continue  # a line cut short by a kill
            if len(parsed) != len(row):
                continue
            parsed["step"] = int(parsed["step"])
            rows.append(parsed)
    return rows


@contextmanager
def _interrupts_between_steps() -> Iterator[Callable[[], bool]]:
    """SIGINT (Ctrl-C, Jupyter's interrupt) and SIGTERM (a scheduler) only raise a flag, which the
    loop reads once a step is complete: raised anywhere, e.g. inside `optimizer.step()`, an
    interrupt would leave weights one update ahead of the step the checkpoint names. A second
    SIGINT raises at once, for a step that never ends. Yields a function that reads the flag;
    a signal the loop did not act on (one during the final save) is raised on leaving the block."""
    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt("second interrupt: stopped at once, without a checkpoint of this step")
        received.append(signum)

    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread, which alone receives signals
        yield lambda: False
        return
    try:
        yield lambda: bool(received)
    finally:
        for s, h in previous.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)  # None: a handler set outside Python
    if received:
        raise KeyboardInterrupt(f"{signal.Signals(received[0]).name} during training")


class NonFiniteLossError(FloatingPointError):
    """A step's loss is NaN or infinite; raised before it reaches the weights."""


# ----------------------------------------------------------------------------- the loop


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def train(method: WSSSMethod, dataset: torch.utils.data.Dataset, cfg: TrainConfig,
          run_dir: str | os.PathLike, resume: bool = True) -> TrainResult:
    """Train `method` on `dataset` (which must have `set_epoch`) into `run_dir`.

    With `resume`, a checkpoint in `run_dir` is picked up and training continues from its step;
    a run that already finished returns at once. A second process training the same run (two
    notebooks side by side) waits for the first and then finds its finished model. Gradients are
    on even when called under `torch.no_grad()` (an evaluation that finds its model untrained).
    """
    run_dir = Path(run_dir)
    with exclusive(run_dir / ".train.lock", "training"), torch.enable_grad(), \
            _interrupts_between_steps() as interrupted:
        return _train(method, dataset, cfg, run_dir, resume, interrupted)


def _train(method: WSSSMethod, dataset: torch.utils.data.Dataset, cfg: TrainConfig, run_dir: Path,
           resume: bool, interrupted: Callable[[], bool]) -> TrainResult:
    info = init_distributed(device_named(cfg.device).type)
    device = resolve_device(cfg.device, info)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        # Temporary files of saves a SIGKILL cut short; the training lock rules out a live writer.
        for name in (CHECKPOINT, MODEL, LOG, SUMMARY):
            for tmp in run_dir.glob(f".{name}.*"):
                tmp.unlink(missing_ok=True)
    if resume and (run_dir / SUMMARY).is_file() and (run_dir / MODEL).is_file():
        import json

        summary = json.loads((run_dir / SUMMARY).read_text())
        to_device(load_model(method, run_dir), device)
        return TrainResult(**summary)

    seed_everything(cfg.seed)
    use_amp = autocast_enabled(cfg, device)
    channels_last = cfg.channels_last
    amp_dtype = torch.bfloat16 if (device.type == "cpu" or torch.cuda.is_bf16_supported()) else torch.float16
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    to_device(method, device, channels_last)
    optimizer = build_optimizer(method, cfg)
    scaler = torch.amp.GradScaler("cuda") if (use_amp and amp_dtype == torch.float16) else None

    n = len(dataset)
    steps_per_epoch = n // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"dataset of {n} images is smaller than one batch of {cfg.batch_size}")
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch

    step, seconds_before = 0, 0.0
    ckpt_path = run_dir / CHECKPOINT
    if resume and ckpt_path.is_file():
        state = load_file(ckpt_path)  # on the CPU, where the RNG states belong; load_state_dict moves the rest
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"])
        step = int(state["step"])
        seconds_before = float(state.get("seconds", 0.0))
    resumed_from = step
    log = LossLog(run_dir / LOG, step, info.is_main)

    model: torch.nn.Module = method
    if info.world_size > 1:
        model = DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=method.find_unused_parameters)
    method.train()
    bar = tqdm(total=total, initial=step, desc=f"train {method.name}", disable=not (cfg.progress and info.is_main),
               dynamic_ncols=True)
    window_t, window_imgs = time.perf_counter(), 0
    t_start, trained_imgs = time.perf_counter(), 0
    wait_before = DATA_WAIT.get("train", 0.0)

    def run_seconds() -> float:  # the whole run's training time, earlier resumed pieces included
        return seconds_before + time.perf_counter() - t_start
    sums: dict[str, torch.Tensor] = {}
    last: dict[str, float] = {}
    try:
        while step < total:
            epoch, start = divmod(step, steps_per_epoch)
            dataset.set_epoch(epoch)
            sampler = GlobalBatchSampler(n, cfg.batch_size, cfg.seed, epoch, start, info)
            # Its own generator: a DataLoader draws worker seeds from the global RNG, which would
            # shift the random numbers a method draws when a resumed run starts mid-epoch.
            loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
                                                 collate_fn=collate, pin_memory=device.type == "cuda",
                                                 generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
            for batch in waited(loader, "train"):
                progress = step / total
                lr_scale = poly_lr(1.0, step, total, cfg.poly_power)
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * group["lr_mult"] * lr_scale
                batch = _to_device(batch, device, channels_last)
                autocast = torch.autocast(device.type, dtype=amp_dtype) if use_amp else nullcontext()
                with autocast:
                    losses = model(batch, progress)
                # One NaN in a label or an image would spread to every weight within steps. On CUDA
                # this waits for the forward pass, as logging the loss does anyway.
                if not torch.isfinite(losses["loss"].detach()):
                    bad = [k for k, v in losses.items() if not torch.isfinite(v.detach()).all()]
                    raise NonFiniteLossError(
                        f"step {step + 1}: non-finite loss terms {bad} on images {batch.get('id')}: check their "
                        f"labels and pixels, or lower the learning rate. Training stopped before this step "
                        f"changed any weight; {ckpt_path} (if any) holds the last good step")
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(losses["loss"]).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    losses["loss"].backward()
                    optimizer.step()
                method.after_optimizer_step(progress)
                step += 1
                imgs = batch["image"].shape[0] * info.world_size
                window_imgs += imgs
                trained_imgs += imgs
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v.detach().float()
                bar.update(1)
                if step % cfg.log_every == 0 or step == total:
                    count = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
                    last = {k: float(v) / count for k, v in sums.items()}
                    sums = {}
                    now = time.perf_counter()
                    ips = window_imgs / max(now - window_t, 1e-9)
                    window_t, window_imgs = now, 0
                    log.write({"step": step, "epoch": epoch, "lr": cfg.lr * lr_scale, **last, "images_per_s": ips})
                    bar.set_postfix(loss=f"{last['loss']:.4f}", refresh=False)
                if step >= total:
                    break
                # The step is complete: the one place where an interrupt is safe.
                stop = _on_any_rank(interrupted(), info, device)
                if info.is_main and (stop or step % cfg.ckpt_every == 0):
                    save_checkpoint(ckpt_path, method, optimizer, scaler, step, cfg, run_seconds())
                if stop:
                    message = (f"interrupted at step {step}/{total}: checkpoint saved to {ckpt_path}; "
                               "train again to resume")
                    if info.is_main:
                        tqdm.write(message, file=sys.stderr)
                    raise KeyboardInterrupt(message)
    finally:
        bar.close()
    seconds = time.perf_counter() - t_start  # this piece; images/s is its throughput
    result = TrainResult(steps=step, seconds=run_seconds(), images_per_s=trained_imgs / max(seconds, 1e-9),
                         last_losses=last, resumed_from=resumed_from,
                         data_wait_seconds=DATA_WAIT.get("train", 0.0) - wait_before)
    if info.is_main:
        with atomic_path(run_dir / MODEL) as tmp:
            torch.save(method.state_dict(), tmp)
        write_json(run_dir / SUMMARY, asdict(result))
        save_checkpoint(ckpt_path, method, optimizer, scaler, step, cfg, result.seconds)
    if info.world_size > 1:
        dist.barrier()
    method.eval()
    return result


def _on_any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when it is true on one: all ranks must stop after the same step."""
    if info.world_size == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


M = TypeVar("M", bound=torch.nn.Module)


def to_device(module: M, device: torch.device | str, channels_last: bool = True) -> M:
    """`module` on `device`, its conv weights in channels_last (NHWC) unless told otherwise. oneDNN and
    cuDNN run NHWC convolutions faster, on CPU too (measured on one thread, fp32, `small` backbone, 96 px
    batches of 16: training CAM 1.24x, RCM + MAM 1.27x, EPS 1.20x, VWL 1.14x, shape cues 1.10x,
    SANCE 1.07x; class maps at scale 2: 1.27-1.36x). Values agree with NCHW to float rounding."""
    return module.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _to_device(batch: dict[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            if k == "image" and channels_last:
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out
