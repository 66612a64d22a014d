"""build_dataloader: a YoloDataset wrapped in a seeded DataLoader.

Batches are ``(imgs, targets, paths, shapes)``: imgs uint8 (B, 3, H, W) RGB, targets float32
(N, 6) [image index in batch, cls, cx, cy, w, h] normalized, paths tuple[str], shapes a tuple
per image of ``((h0, w0), ((ratio_h, ratio_w), (padw, padh)))`` (None for mosaic samples).

Reproducibility: the DataLoader's generator is seeded with ``seed``; every worker reseeds the
dataset's augmentation RNGs from its own torch seed (which derives from that generator), so a run
with the same seed and worker count sees the same augmentations.

Under DDP (``world_size`` > 1) a DistributedSampler gives each process its own share of every
epoch, reshuffled per epoch from ``seed + epoch`` (the Trainer calls ``sampler.set_epoch``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import cv2
import torch
from torch.utils.data import DataLoader, DistributedSampler, get_worker_info

from utils.data.dataset import YoloDataset
from utils.errors import ConfigError

LOGGER = logging.getLogger(__name__)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: give this worker's dataset copy its own augmentation streams."""
    info = get_worker_info()
    if info is not None:
        info.dataset.reseed(torch.initial_seed() % 2**32)


def build_dataloader(img_files: list[str], imgsz: int, batch_size: int, stride: int,
                     hyp: dict[str, Any] | None, augment: bool, rect: bool = False, workers: int = 0,
                     shuffle: bool = False, cache: str | None = None, seed: int = 0,
                     prefix: str = "", nc: int | None = None, rank: int = 0,
                     world_size: int = 1) -> tuple[DataLoader, YoloDataset]:
    """Build the dataset and its DataLoader.

    ``rect`` batches keep each batch's images at one shape, so they are never shuffled (a warning
    says so when shuffle was asked). ``workers`` is capped by the CPU count; ``pin_memory`` is used
    only when CUDA is available. ``nc`` skips images with class ids >= nc. ``batch_size`` is per
    process; with ``world_size`` > 1 process ``rank`` loads its share of the dataset. Returns (loader, dataset).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    dataset = YoloDataset(img_files, imgsz=imgsz, augment=augment, hyp=hyp, rect=rect, batch_size=batch_size,
                          stride=stride, cache=cache, pad=0.0, prefix=prefix, nc=nc)
    dataset.reseed(seed + rank)  # each process its own augmentation streams
    if rect and shuffle:
        LOGGER.warning("%sWARNING: rect batches cannot be shuffled, using shuffle=False", prefix)
        shuffle = False
    return make_loader(dataset, batch_size, workers, shuffle, seed, rank, world_size), dataset


def make_loader(dataset: YoloDataset, batch_size: int, workers: int, shuffle: bool, seed: int,
                rank: int = 0, world_size: int = 1) -> DataLoader:
    """A seeded DataLoader over ``dataset`` (new worker processes get a fresh copy of it).

    Called again when the dataset changes mid-run (e.g. mosaic switched off for the last epochs),
    since persistent workers keep the copy they were started with.
    """
    batch_size = min(batch_size, len(dataset))
    workers = max(0, min(workers, os.cpu_count() or 1, batch_size))
    if workers > 0:
        # OpenCV's thread pool does not survive fork(): a worker that inherits a used pool can hang
        # in its first cv2 call. Sequential OpenCV is also what parallel workers want.
        cv2.setNumThreads(0)
    generator = torch.Generator()
    generator.manual_seed(seed + rank)  # worker seeds differ per process; the sampler's order does not
    sampler = None
    if world_size > 1:  # every process sees len(dataset) / world_size images (padded to equal counts)
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
        shuffle = False
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        collate_fn=YoloDataset.collate_fn,
        worker_init_fn=seed_worker,
        generator=generator,
        persistent_workers=workers > 0,
    )
