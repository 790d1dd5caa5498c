"""Loss log a person can plot (CSV, one row per logged step) plus a progress bar."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from tqdm import tqdm


class TrainLog:
    """Appends rows to OUTPUT/log.csv (header once; resume keeps the earlier rows) and drives tqdm."""

    def __init__(self, path: Path, fields: list[str], total: int, initial: int, enabled: bool):
        self.path = path
        self.fields = fields
        self.enabled = enabled
        self.bar = tqdm(total=total, initial=initial, disable=not enabled, file=sys.stderr, dynamic_ncols=True)
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            if initial == 0 or not path.is_file():
                with path.open("w", newline="") as handle:
                    csv.writer(handle).writerow(fields)
            else:
                self._truncate_after(initial)

    def _truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint so the curve has no duplicates."""
        with self.path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(row for row in rows if int(row["step"]) <= step)

    def advance(self, steps: int = 1, **postfix: float | str) -> None:
        """Move the bar; show the latest figures next to it."""
        self.bar.update(steps)
        if postfix:
            self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()}, refresh=False)

    def write(self, row: dict) -> None:
        """Append one row (main process only)."""
        if not self.enabled:
            return
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self.fields).writerow({k: row.get(k, "") for k in self.fields})

    def close(self) -> None:
        """Finish the bar."""
        self.bar.close()
