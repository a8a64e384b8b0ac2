"""Stage 0: pretrain the small backbone on a large generated SynthVOC corpus, image labels only.

Every paper starts from ImageNet weights; the small CPU backbone has none, and 1,500 training
images are too few to learn shape from scratch: a CAM network memorises them (training AP 1.0)
while its val AP on the shape classes stays near chance. A generator gives us what ImageNet gives
the papers: many more images of the same world. The corpus uses its own seed, so it shares no image
with train, val or test, and only image-level labels, so nothing a weakly supervised method may not
see leaks in. A share of simplified images (one or two flat objects, no clutter) carries the shape
signal early; the rest look like the preset. The weights go beside the code (`SYNTHVOC_WEIGHTS`),
with a JSON record of how they were made and what they reach, and the quick and full presets
start every method from them.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from wsss.progress import tqdm

from wsss.data import synthvoc
from wsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from wsss.data.voc import VOCDataset
from wsss.cache import code_version
from wsss.io import write_json
from wsss.methods.base import build_method, classification_loss, gap_cam_logits
from wsss.models.backbones import SYNTHVOC_WEIGHTS

# Simplified images: the shape of an object is the only cue left to tell its class.
EASY_OVERRIDES: dict[str, Any] = dict(max_objects=2, max_occlusion=0.2, n_distractors=(0, 0), p_two_tone=0.0,
                                      texture_contrast=0.0)


@dataclass
class PretrainConfig:
    preset: str = "quick"  # the SynthVOC preset whose look (image size, clutter) the corpus copies
    n_images: int = 16000
    easy_fraction: float = 0.25
    seed: int = 1_000_003  # data seeds of train/val/test are small integers: no shared image
    steps: int = 5000
    batch_size: int = 32
    lr: float = 1e-3  # constant: a decaying rate ended on the plateau before shape was learned
    weight_decay: float = 1e-2
    eval_every: int = 500
    workers: int = 2  # processes rendering the corpus

    def __post_init__(self) -> None:
        if self.n_images < self.batch_size or self.steps < 1 or not 0.0 <= self.easy_fraction <= 1.0:
            raise ValueError("need n_images >= batch_size, steps >= 1 and 0 <= easy_fraction <= 1")


def _render_chunk(args: tuple[str, dict[str, Any], int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    preset, overrides, seed, start, stop = args
    cfg = synthvoc.make_config(preset, n_train=stop, n_val=0, n_test=0, **overrides)
    samples = [synthvoc.render_image(cfg, seed, i) for i in range(start, stop)]
    return np.stack([s.image for s in samples]), np.stack([s.classes for s in samples])


def render_corpus(cfg: PretrainConfig, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, S, S) uint8 images and (N, K) labels, rendered in memory (no files: only labels are used)."""
    n_easy = round(cfg.n_images * cfg.easy_fraction)
    chunk = 250
    jobs = [(cfg.preset, EASY_OVERRIDES if easy else {}, cfg.seed + easy, start, min(start + chunk, n))
            for easy, n in ((1, n_easy), (0, cfg.n_images - n_easy)) for start in range(0, n, chunk)]
    bar = dict(total=len(jobs), desc="pretraining corpus", unit="chunk", disable=not progress)
    if cfg.workers > 1:
        with mp.get_context("spawn").Pool(cfg.workers) as pool:
            parts = list(tqdm(pool.imap(_render_chunk, jobs), **bar))
    else:
        parts = [_render_chunk(job) for job in tqdm(jobs, **bar)]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts])).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return images, labels


def _normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.as_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.as_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def average_precision(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-class AP of (N, K) scores against (N, K) multi-hot labels."""
    order = np.argsort(-scores, axis=0, kind="stable")
    hits = np.take_along_axis(labels, order, axis=0)
    precision = np.cumsum(hits, axis=0) / np.arange(1, len(hits) + 1)[:, None]
    return (precision * hits).sum(0) / np.maximum(hits.sum(0), 1)


@torch.no_grad()
def _val_ap(method: torch.nn.Module, images: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    method.eval()
    scores = torch.cat([gap_cam_logits(method.backbone(_normalize(images[i:i + 128]))[-1], method.classifier)
                        for i in range(0, len(images), 128)])
    method.train()
    return average_precision(scores.numpy(), labels)


def _val_split(preset: str) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """The preset's val split (seed 0), to watch transfer; the weights are not selected on it."""
    ds = VOCDataset(synthvoc.generate(preset=preset, seed=0, progress=False), "val", with_mask=False)
    samples = [ds.load(i) for i in range(len(ds))]
    images = torch.from_numpy(np.stack([s["image"] for s in samples])).permute(0, 3, 1, 2)
    return images, np.stack([s["label"] for s in samples]), list(ds.class_names)


def pretrain(cfg: PretrainConfig, out: str | Path = SYNTHVOC_WEIGHTS, progress: bool = True) -> dict[str, Any]:
    """Train a CAM classifier on the generated corpus; save its backbone to `out` and a record beside it."""
    out = Path(out)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    images, labels = render_corpus(cfg, progress)
    render_s = time.time() - t0
    val_images, val_labels, names = _val_split(cfg.preset)
    method = build_method("cam", labels.shape[1], "small")
    method.train()
    opt = torch.optim.AdamW(method.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[dict[str, Any]] = []
    gen = torch.Generator().manual_seed(cfg.seed)
    t1 = time.time()
    bar = tqdm(range(1, cfg.steps + 1), desc="pretraining", unit="step", disable=not progress)
    for step in bar:
        idx = torch.randint(0, len(images), (cfg.batch_size,), generator=gen)
        x = _normalize(images[idx])
        flip = torch.rand(cfg.batch_size, generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        loss = classification_loss(gap_cam_logits(method.backbone(x)[-1], method.classifier), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            ap = _val_ap(method, val_images, val_labels)
            history.append({"step": step, "loss": round(loss.item(), 4), "val_map": round(float(ap.mean()), 4),
                            "val_ap": {n: round(float(a), 4) for n, a in zip(names, ap)},
                            "seconds": round(time.time() - t1, 1)})
            bar.set_postfix(loss=f"{loss.item():.3f}", val_map=f"{ap.mean():.3f}")
    train_s = time.time() - t1
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(method.backbone.state_dict(), out)
    record = {"config": asdict(cfg), "code_version": code_version(), "render_seconds": round(render_s, 1),
              "train_seconds": round(train_s, 1), "images_per_s": round(cfg.steps * cfg.batch_size / train_s, 1),
              "history": history}
    write_json(out.with_suffix(".json"), record)
    return record


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pretrain", help="pretrain the small backbone on a generated SynthVOC corpus")
    defaults = PretrainConfig()
    for name in ("preset", "n_images", "easy_fraction", "seed", "steps", "batch_size", "lr", "workers"):
        p.add_argument(f"--{name.replace('_', '-')}", type=type(getattr(defaults, name)),
                       default=getattr(defaults, name))
    p.add_argument("--out", default=str(SYNTHVOC_WEIGHTS), help="where the backbone weights go")
    p.set_defaults(func=lambda a: print(json.dumps(pretrain(
        PretrainConfig(**{k: getattr(a, k) for k in ("preset", "n_images", "easy_fraction", "seed", "steps",
                                                     "batch_size", "lr", "workers")}), a.out)["history"][-1])))
