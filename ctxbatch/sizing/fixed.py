"""The fixed sizer: every batch claims `worker.batch_size` contexts (`dynamic_batch_sizing: false`).

This is the seed's behaviour and the baseline the dynamic sizer is measured against. Its
bounds are the batch size itself, so `min_batch_size`/`max_batch_size` (which belong to the
dynamic sizer) never change it; with an async engine and no size in the config, the size is the
engine's window instead (see `Sizer.bounds`). Splitting still follows the cluster's threads and the measured
work per context, as for every sizer (see `split.py`).
"""

from __future__ import annotations

from ctxbatch.sizing.base import Readings, Sizer


class FixedSizer(Sizer):
    """Always `batch_size` contexts."""

    name = "fixed"

    @property
    def configured_bounds(self) -> tuple[int, int]:
        return self.settings.batch_size, self.settings.batch_size

    def _next_size(self, readings: Readings) -> int:
        return self.bounds[0]

    def _reason(self) -> str:
        if self.bounds[0] != self.settings.batch_size:
            return f"the async engine's window of {self.window} calls (no batch_size configured)"
        return f"fixed batch_size {self.settings.batch_size}"
