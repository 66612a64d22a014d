"""The SR branch at training time: the extra loss the engine adds for a model with a FeatureSR row.

After Gu, Li, Wu, Jia, Chen, "Small Object Detection by Generative and Discriminative Learning".
Each iteration the generator's output G (B, C, H/4, W/4) is captured by a forward hook; every
``sr_every``-th iteration the teacher (the EMA model, no gradient) runs the generator's input
layer on the batch upsampled 2x (or on a crop of it, ``sr_crop``) to give the target T on the same
grid. Loss terms, each multiplied by its hyp gain (0 = off, and then not computed at all):

    sr_mse   mean over cells of |G - T|^2 (channel mean), weight 1 on cells of small objects
             (area < fdl_area) and ``sr_mse_bg`` elsewhere
    sr_tv    total variation of G
    sr_adv   non-saturating adversarial loss of G's patches around small objects against the
             patch discriminator (real = T's patches), which takes its own optimizer step
    sr_dcls  class loss of G's patches under the discriminator's class head (trained on T's)

The detection loss at P2 is the source's box regression term. The sum is multiplied by the batch
size, as the detection loss is. Epoch means go to results.csv (``sr/*`` columns).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import torch

from models.sr import FeatureSR
from utils.errors import ConfigError
from utils.sr_discriminator import SRDiscriminator
from utils.sr_loss import (boxes_in_window, extract_patches, masked_mse, patch_rois, small_boxes_px,
                           small_object_mask, total_variation)
from utils.sr_teacher import choose_window, crop_to_window, teacher_target

SR_KEYS = ("sr_mse", "sr_mse_bg", "sr_tv", "sr_adv", "sr_dcls", "sr_d_lr", "sr_every", "sr_crop")
STAT_KEYS = ("sr/mse", "sr/tv", "sr/adv", "sr/dcls", "sr/d_loss", "sr/d_acc", "sr/teacher_ms", "sr/teacher_frac")
MAX_PATCHES = 64  # discriminator patches per iteration (random subset of the small objects)


def find_generator(model: torch.nn.Module) -> FeatureSR | None:
    """The model's FeatureSR row, or None; more than one is a ConfigError (one target layer)."""
    found = [m for m in model.modules() if isinstance(m, FeatureSR)]
    if len(found) > 1:
        raise ConfigError(f"the SR branch supports one FeatureSR row per model, found {len(found)}")
    return found[0] if found else None


def check_sr_hyp(hyp: dict) -> None:
    """Ranges of the sr_* keys: gains >= 0, sr_every a positive integer, sr_crop in [0, 1]."""
    for k in ("sr_mse", "sr_mse_bg", "sr_tv", "sr_adv", "sr_dcls", "sr_d_lr"):
        if hyp[k] < 0:
            raise ConfigError(f"hyperparameter {k} must be >= 0, got {hyp[k]}")
    if hyp["sr_every"] < 1 or int(hyp["sr_every"]) != hyp["sr_every"]:
        raise ConfigError(f"hyperparameter sr_every must be an integer >= 1, got {hyp['sr_every']}")
    if not 0 <= hyp["sr_crop"] <= 1:
        raise ConfigError(f"hyperparameter sr_crop must be in [0, 1] (0 = whole image), got {hyp['sr_crop']}")


class SRBranch:
    """Callable ``loss = branch(imgs, targets, ni)`` plus :meth:`epoch_stats` for results.csv.

    Args:
        generator: the model's FeatureSR module (a forward hook records its training output).
        teacher_layer: row index of the generator's input in the model.
        teacher: returns the model whose ``forward_until`` gives the target (the EMA model; a
            callable because the Trainer replaces its EMA after AutoAnchor).
        hyp: hyperparameters with the sr_* keys and fdl_area.
        nc, device, seed: classes, device of the discriminator, seed of crops and patch draws.
    """

    def __init__(self, generator: FeatureSR, teacher_layer: int, teacher: Callable[[], torch.nn.Module],
                 hyp: dict, nc: int, device: torch.device, seed: int = 0):
        check_sr_hyp(hyp)
        self.generator, self.teacher_layer, self.teacher = generator, teacher_layer, teacher
        self.gain = {k: float(hyp[k]) for k in ("sr_mse", "sr_tv", "sr_adv", "sr_dcls")}
        self.mse_bg, self.every, self.crop = float(hyp["sr_mse_bg"]), int(hyp["sr_every"]), float(hyp["sr_crop"])
        self.small_area = float(hyp["fdl_area"])
        self.needs_teacher = any(self.gain[k] > 0 for k in ("sr_mse", "sr_adv", "sr_dcls"))
        self.rng = random.Random(seed)
        self.patch_gen = torch.Generator().manual_seed(seed)
        self.disc = None
        if self.gain["sr_adv"] > 0 or self.gain["sr_dcls"] > 0:
            with torch.random.fork_rng(devices=[]):  # the discriminator's init leaves the training RNG alone
                torch.manual_seed(seed)
                self.disc = SRDiscriminator(generator.out_channels, nc, self.gain["sr_adv"], self.gain["sr_dcls"],
                                            float(hyp["sr_d_lr"]), device)
        self._generated: torch.Tensor | None = None
        generator.register_forward_hook(self._capture)
        self._reset_stats()

    def _capture(self, module, inputs, output) -> None:
        if module.training:
            self._generated = output

    def _reset_stats(self) -> None:
        self._sums: dict[str, torch.Tensor | float] = {k: 0.0 for k in STAT_KEYS}
        self._counts = {"iter": 0, "teacher": 0, "patches": 0}

    def __call__(self, imgs: torch.Tensor, targets: torch.Tensor, ni: int) -> torch.Tensor:
        """The branch's loss for one batch (0-d, times the batch size) after the model's forward on it.

        Args:
            imgs: (B, 3, H, W) float images in [0, 1] the model just ran on.
            targets: (nt, 6) ``[b, cls, cx, cy, w, h]`` normalized, on the images' device.
            ni: iteration index of the run (the teacher runs when ``ni % sr_every == 0``).
        """
        generated, self._generated = self._generated, None
        if generated is None:
            raise RuntimeError("SRBranch called before a training forward pass of its model")
        self._counts["iter"] += 1
        loss = generated.new_zeros((), dtype=torch.float32)
        if self.gain["sr_tv"] > 0:
            loss = loss + self._add("sr/tv", self.gain["sr_tv"] * total_variation(generated))
        if self.needs_teacher and ni % self.every == 0:
            loss = loss + self._teacher_terms(generated, imgs, targets)
        return loss * imgs.shape[0]

    def _teacher_terms(self, generated: torch.Tensor, imgs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """MSE, adversarial and class terms against the 2x teacher on the whole batch or a crop."""
        h, w = imgs.shape[2:]
        boxes = small_boxes_px(targets, h, w, self.small_area)
        window = choose_window(h, w, self.crop, (boxes[:, 2:4] + boxes[:, 4:6]).cpu() / 2, self.rng)
        t0 = time.perf_counter()
        target = teacher_target(lambda x: self.teacher().forward_until(x, self.teacher_layer), imgs, window)
        if target.is_cuda:
            torch.cuda.synchronize(target.device)  # the logged cost is the teacher's, not the queue's
        self._sums["sr/teacher_ms"] += (time.perf_counter() - t0) * 1000
        self._counts["teacher"] += 1
        gen = crop_to_window(generated, window)
        if gen.shape != target.shape:
            raise ConfigError(f"FeatureSR output {tuple(gen.shape)} does not match the 2x teacher's "
                              f"{tuple(target.shape)}; image sides must be multiples of 8")
        boxes = boxes_in_window(boxes, window)
        loss = gen.new_zeros((), dtype=torch.float32)
        if self.gain["sr_mse"] > 0:
            mask = small_object_mask(boxes, (gen.shape[0], *gen.shape[2:]), self.mse_bg)
            loss = loss + self._add("sr/mse", self.gain["sr_mse"] * masked_mse(gen, target, mask))
        if self.disc is not None and len(boxes):
            loss = loss + self._adversarial_terms(gen, target, boxes)
        return loss

    def _adversarial_terms(self, gen: torch.Tensor, target: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Discriminator step on patches around small objects, then the generator's two losses."""
        if len(boxes) > MAX_PATCHES:
            boxes = boxes[torch.randperm(len(boxes), generator=self.patch_gen)[:MAX_PATCHES].to(boxes.device)]
        rois, labels = patch_rois(boxes), boxes[:, 1].long()
        real, fake = extract_patches(target, rois), extract_patches(gen, rois)
        d = self.disc.step(real, fake, labels)
        adv, cls = self.disc.generator_losses(fake, labels)
        self._counts["patches"] += 1
        self._sums["sr/d_loss"] += d["d_loss"]
        self._sums["sr/d_acc"] += d["d_acc"]
        return self._add("sr/adv", self.gain["sr_adv"] * adv) + self._add("sr/dcls", self.gain["sr_dcls"] * cls)

    def _add(self, key: str, value: torch.Tensor) -> torch.Tensor:
        self._sums[key] += value.detach()
        return value

    def epoch_stats(self) -> dict[str, float]:
        """Means since the last call (then reset): each term over the iterations that computed it.

        'sr/tv' over all iterations, 'sr/mse' and 'sr/teacher_ms' over teacher passes, 'sr/adv',
        'sr/dcls', 'sr/d_loss', 'sr/d_acc' over teacher passes that had small objects;
        'sr/teacher_frac' is the fraction of iterations that ran the teacher.
        """
        n = self._counts
        per = {"sr/tv": n["iter"], "sr/mse": n["teacher"], "sr/teacher_ms": n["teacher"],
               **{k: n["patches"] for k in ("sr/adv", "sr/dcls", "sr/d_loss", "sr/d_acc")}}
        stats = {k: float(self._sums[k]) / per[k] if per[k] else 0.0 for k in per}
        stats["sr/teacher_frac"] = n["teacher"] / n["iter"] if n["iter"] else 0.0
        self._reset_stats()
        return {k: stats[k] for k in STAT_KEYS}

    def state_dict(self) -> dict | None:
        """The discriminator and its optimizer, for last.pt (None without a discriminator)."""
        return self.disc.state_dict() if self.disc is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.disc is not None and state is not None:
            self.disc.load_state_dict(state)


def build_sr_branch(model: torch.nn.Module, hyp: dict, teacher: Callable[[], torch.nn.Module], nc: int,
                    device: torch.device, seed: int = 0) -> SRBranch | None:
    """The SR branch of ``model`` (a DetectionModel), or None when the model has no FeatureSR row."""
    generator = find_generator(model)
    if generator is None:
        return None
    if not isinstance(generator.f, int):
        raise ConfigError("a FeatureSR row takes one input row")
    layer = generator.i + generator.f if generator.f < 0 else generator.f  # -k: k rows back
    return SRBranch(generator, layer, teacher, hyp, nc, device, seed)
