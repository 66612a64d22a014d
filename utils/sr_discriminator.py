"""The SR branch's discriminator on feature patches, with its own optimizer (train time only).

It is never a submodule of the detection model: checkpoints' ``model`` and the exported or fused
graph hold the generator alone. Its real/fake head is the adversary of the generator (the
source's L_adv); its class head classifies patches of the target features (the source's L_cls) and
gives the generator a class loss on the generated patches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """(K, C, P, P) feature patches -> real/fake logits (K,) and class logits (K, nc)."""

    def __init__(self, c: int, nc: int, width: int = 64):
        super().__init__()
        # no BatchNorm: a batch holds a few dozen patches of two kinds (real, generated)
        self.body = nn.Sequential(
            nn.Conv2d(c, width, 3, 1, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, width, 3, 2, 1), nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.real_fake = nn.Linear(width, 1)
        self.classify = nn.Linear(width, nc)

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.body(patches)
        return self.real_fake(z).squeeze(1), self.classify(z)


class SRDiscriminator:
    """A :class:`PatchDiscriminator` and its Adam optimizer (betas 0.5, 0.999, as in GAN practice).

    Args:
        c: channels of the feature patches; nc: number of classes.
        adv, cls: the hyp gains ``sr_adv`` and ``sr_dcls``; a term whose gain is 0 is not trained.
        lr: learning rate (hyp ``sr_d_lr``).
    """

    def __init__(self, c: int, nc: int, adv: float, cls: float, lr: float, device: torch.device):
        self.net = PatchDiscriminator(c, nc).to(device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr, betas=(0.5, 0.999))
        self.adv, self.cls = adv, cls

    def step(self, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimizer step on detached patches (K, C, P, P) with class ids (K,).

        Returns 0-d detached tensors: 'd_loss' and 'd_acc' (fraction of real and generated patches
        the real/fake head gets right; 0 when ``adv`` is 0 and that head is not trained).
        """
        with torch.autocast(real.device.type, enabled=False):
            self.net.train()
            real_logit, real_cls = self.net(real.detach().float())
            fake_logit, _ = self.net(fake.detach().float())
            loss = real.new_zeros(())
            if self.adv > 0:
                loss = loss + F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit)) \
                    + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))
            if self.cls > 0:
                loss = loss + F.cross_entropy(real_cls, labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)  # no stale gradients between steps
        acc = torch.cat([real_logit > 0, fake_logit < 0]).float().mean() if self.adv > 0 else real.new_zeros(())
        return {"d_loss": loss.detach(), "d_acc": acc.detach()}

    def generator_losses(self, fake: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(adversarial, class) losses of generated patches; gradients reach the generator only.

        The adversarial loss is the non-saturating one (generated patches labelled real).
        """
        self.net.requires_grad_(False)  # the generator's backward must not write into the discriminator
        try:
            with torch.autocast(fake.device.type, enabled=False):
                logit, cls_logits = self.net(fake.float())
                adv = F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit)) if self.adv > 0 \
                    else fake.new_zeros(())
                cls = F.cross_entropy(cls_logits, labels) if self.cls > 0 else fake.new_zeros(())
        finally:
            self.net.requires_grad_(True)
        return adv, cls

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
