"""results.csv: one row per epoch, columns fixed by the first row, appended (resume-safe)."""

from __future__ import annotations

import csv
from pathlib import Path
from utils.errors import ConfigError


class ResultsLog:
    """Append epoch rows to ``save_dir/results.csv`` and keep them in memory for plots."""

    def __init__(self, save_dir: Path):
        self.path = Path(save_dir) / "results.csv"

    def append(self, row: dict) -> None:
        new = not self.path.exists()
        if not new:
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), None)
            if header is not None and header != list(row):
                raise ConfigError(f"{self.path}: columns changed; expected {header}")
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow({k: (f"{v:.5g}" if isinstance(v, float) else v) for k, v in row.items()})

    def truncate(self, last_epoch: int) -> None:
        """Drop rows after ``last_epoch`` (0-based) so a resumed run does not log an epoch twice."""
        if not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        kept = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= last_epoch]
        with open(self.path, "w", newline="") as f:
            csv.writer(f).writerows(kept)
