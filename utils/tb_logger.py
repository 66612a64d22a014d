"""TensorBoard logging of a training run, beside results.csv in the run folder.

``TensorBoardLogger.create`` returns None when logging is switched off (``--no-tensorboard``) or
the ``tensorboard`` package is missing (one line says so; training goes on, results.csv is
unchanged). Otherwise the run folder gets an ``events.out.tfevents.*`` file holding, per epoch:

* scalars: every number of the results.csv row under the same tag (``train/box_loss``,
  ``metrics/mAP50``, ``metrics/APs``, ``val/box_loss``, ``fitness``, ``lr/pg0`` ...);
* PR curves at IoU 0.5 (``pr/<class>``), one per class with labels, from validation;
* images: the ``train_batch*.jpg`` mosaics after the first epoch, and at the end the
  ``val_batch*_labels/pred.jpg`` mosaics and the curve plots of best.pt's validation.

View with ``tensorboard --logdir runs/train``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

END_IMAGES = ("val_batch*_labels.jpg", "val_batch*_pred.jpg", "PR_curve.png", "confusion_matrix.png", "ap_by_size.png")


class TensorBoardLogger:
    """Writes scalars, PR curves and images for one run folder; see the module docstring for the tags."""

    def __init__(self, save_dir: str | Path, writer):
        self.save_dir, self.writer = Path(save_dir), writer
        self._train_images_logged = False

    @classmethod
    def create(cls, save_dir: str | Path, enabled: bool = True) -> TensorBoardLogger | None:
        """A logger writing into ``save_dir``, or None when disabled or tensorboard is not installed."""
        if not enabled:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package
            print("TensorBoard: not installed (pip install tensorboard); logging to results.csv only")
            return None
        print(f"TensorBoard: view with `tensorboard --logdir {Path(save_dir).parent}`")
        return cls(save_dir, SummaryWriter(log_dir=str(save_dir)))

    def on_epoch_end(self, row: dict, epoch: int, ap=None, names: list[str] | None = None) -> None:
        """Log one results.csv ``row``; ``ap`` (an APResult of this epoch's validation) adds PR curves."""
        for tag, value in row.items():
            if tag != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag, float(value), epoch)
        if ap is not None:
            self.log_pr_curves(ap, names or [], epoch)
        if not self._train_images_logged:
            self._train_images_logged = self.log_images(("train_batch*.jpg",), epoch) > 0
        self.writer.flush()

    def log_pr_curves(self, ap, names: list[str], epoch: int) -> None:
        """Per class: precision against recall at IoU 0.5 (``ap.pr_curve``: (k, 101) at recall 0..1)."""
        recall = np.linspace(0, 1, ap.pr_curve.shape[1]) if len(ap.pr_curve) else None
        for i, c in enumerate(ap.classes):
            precision = np.asarray(ap.pr_curve[i], dtype=np.float64)
            zeros = np.zeros_like(precision)
            name = names[int(c)] if int(c) < len(names) else str(int(c))
            # TensorBoard orders points by threshold (recall falling); the counts are not known here.
            self.writer.add_pr_curve_raw(f"pr/{name}", zeros, zeros, zeros, zeros, precision[::-1], recall[::-1],
                                         global_step=epoch, num_thresholds=len(precision))

    def log_images(self, patterns: tuple[str, ...], step: int) -> int:
        """Add the run folder's images matching ``patterns`` (tag: file stem); returns how many."""
        n = 0
        for pattern in patterns:
            for path in sorted(self.save_dir.glob(pattern)):
                img = cv2.imread(str(path))
                if img is not None:
                    self.writer.add_image(path.stem, img[:, :, ::-1].copy(), step, dataformats="HWC")
                    n += 1
        return n

    def on_train_end(self, step: int) -> None:
        """Log the final validation's images and close the events file."""
        self.log_images(END_IMAGES, step)
        self.writer.close()
