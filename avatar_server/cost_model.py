"""How long one batched generate call takes at a given number of denoising steps.

A call is a fixed part (audio windows, mouth guide, noise, the reference/context K/V rotated to the
chunk, the VAE decode, bookkeeping) plus one DiT forward per step. The engine times the call's two
halves separately (`pipe.sample`: conditioning and the DiT steps; `pipe.decode`: the VAE), and this
model keeps, per batch size:

- the decode's running mean (EWMA), refreshed by every call whatever its step count: a fixed amount
  of work, so it tracks how fast the machine is right now (load, clocks, other processes);
- the sampler's running mean per step count, each with the decode mean of the calls it came from.
  A sampler mean measured a while ago is scaled by how much the decode sped up or slowed down since,
  so a step count the engine has not run lately (the default steps, while degraded) is estimated at
  the current speed: the engine recovers as soon as the load goes away.

Two step counts seen give the sampler's fixed part and its cost per step (a line through their
means); with one seen, the whole sampler counts as steps (the saving of fewer steps is then
overrated once, until the fewer steps are measured). A batch size never measured is estimated from
the nearest one, linearly in the batch size. Nothing measured: 0 (run the default and measure).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Below this a decode is too short to measure the machine's speed by (a stand-in generator, a GPU
# that returns before its work is done): sampler means are then used as measured.
MIN_REFERENCE_S = 1e-4


@dataclass(frozen=True)
class CostSplit:
    """One call's predicted seconds as fixed + steps x per_step."""

    fixed_s: float     # VAE decode + the sampler's per-chunk work
    per_step_s: float  # one denoising step (DiT forward, CFG branches included)

    def seconds(self, steps: int) -> float:
        return self.fixed_s + steps * self.per_step_s


@dataclass
class _BatchCost:
    decode: float                                                 # EWMA of the decode, all calls
    sample: dict[int, float] = field(default_factory=dict)       # steps -> EWMA of the sampler
    decode_at: dict[int, float] = field(default_factory=dict)    # steps -> EWMA of the decode of those calls


class CostModel:
    """Fixed and per-step cost per batch size, updated online with EWMA weight `smoothing`."""

    def __init__(self, smoothing: float) -> None:
        self.smoothing = smoothing
        self._batches: dict[int, _BatchCost] = {}

    def update(self, batch: int, steps: int, sample_s: float, decode_s: float) -> None:
        """One measured call: `batch` streams, `steps` steps, its sampler and decode seconds."""
        cost = self._batches.get(batch)
        if cost is None:
            self._batches[batch] = _BatchCost(decode=decode_s, sample={steps: sample_s}, decode_at={steps: decode_s})
            return
        cost.decode = self._mix(cost.decode, decode_s)
        cost.sample[steps] = self._mix(cost.sample.get(steps), sample_s)
        cost.decode_at[steps] = self._mix(cost.decode_at.get(steps), decode_s)

    def split(self, batch: int) -> CostSplit | None:
        """Fixed and per-step seconds of a call of `batch` streams at today's speed (None: nothing measured)."""
        if batch in self._batches:
            return self._split(self._batches[batch])
        if not self._batches:
            return None
        nearest = min(self._batches, key=lambda b: (abs(b - batch), b))
        known = self._split(self._batches[nearest])
        scale = batch / nearest
        return CostSplit(known.fixed_s * scale, known.per_step_s * scale)

    def estimate(self, batch: int, steps: int) -> float:
        """Predicted seconds of one generate call (0 when nothing was measured yet): a step count measured
        at this batch size by its own mean (at today's speed), others by the line."""
        cost = self._batches.get(batch)
        if cost is not None and steps in cost.sample:
            return cost.decode + _sample_now(cost, steps)
        split = self.split(batch)
        return 0.0 if split is None else split.seconds(steps)

    @property
    def batch_sizes(self) -> list[int]:
        return sorted(self._batches)

    def _mix(self, old: float | None, value: float) -> float:
        return value if old is None else old + self.smoothing * (value - old)

    @staticmethod
    def _split(cost: _BatchCost) -> CostSplit:
        points = [(steps, _sample_now(cost, steps)) for steps in cost.sample]
        if len(points) == 1:
            steps, mean = points[0]
            return CostSplit(cost.decode, mean / steps)
        n = len(points)
        mx = sum(s for s, _ in points) / n
        my = sum(y for _, y in points) / n
        slope = sum((s - mx) * (y - my) for s, y in points) / sum((s - mx) ** 2 for s, _ in points)
        slope = max(slope, 0.0)
        intercept = max(my - slope * mx, 0.0)
        return CostSplit(cost.decode + intercept, slope)


def _sample_now(cost: _BatchCost, steps: int) -> float:
    """The sampler mean at `steps`, scaled by how much slower the decode is now than in the calls it came from."""
    now, then = cost.decode, cost.decode_at[steps]
    if now < MIN_REFERENCE_S or then < MIN_REFERENCE_S:
        return cost.sample[steps]
    return cost.sample[steps] * now / then
