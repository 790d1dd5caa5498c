"""The engine's cost model and stage timings, on a virtual clock (no real compute is timed)."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import generate_latest

from avatar_server.cost_model import CostModel
from avatar_server.engine import Engine
from avatar_server.metrics import Metrics
from avatar_server.settings import EngineSettings
from avatar_server.slot import PushAudio, Slot, SlotCallbacks
from avatar_server.testing import FakeConfig, FakePipeline, FakeStreamOptions

CHUNK_S = 0.08  # 2 frames at 25 fps
PLAYOUT_DELAY_S = 0.3


class VirtualClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def test_cost_model_separates_fixed_and_per_step_cost() -> None:
    cost = CostModel(smoothing=0.5)
    assert cost.estimate(1, 2) == 0.0 and cost.split(1) is None   # nothing measured: run the default
    cost.update(batch=1, steps=2, sample_s=0.040, decode_s=0.020)
    assert cost.estimate(1, 2) == pytest.approx(0.060)
    assert cost.split(1).per_step_s == pytest.approx(0.020)        # one step count: the sampler is all steps
    cost.update(batch=1, steps=1, sample_s=0.025, decode_s=0.020)
    split = cost.split(1)
    assert split.fixed_s == pytest.approx(0.030) and split.per_step_s == pytest.approx(0.015)
    assert cost.estimate(1, 3) == pytest.approx(0.075)             # a step count never run: the line
    assert cost.estimate(2, 2) == pytest.approx(0.120)             # a batch size never run: the nearest, scaled


def test_cost_model_estimates_step_counts_not_run_lately_at_todays_speed() -> None:
    cost = CostModel(smoothing=1.0)
    cost.update(batch=1, steps=2, sample_s=0.040, decode_s=0.020)
    cost.update(batch=1, steps=1, sample_s=0.050, decode_s=0.040)  # the machine got twice as slow
    assert cost.estimate(1, 2) == pytest.approx(0.040 + 0.080)     # 2 steps were measured at the old speed
    cost.update(batch=1, steps=1, sample_s=0.025, decode_s=0.020)  # and fast again
    assert cost.estimate(1, 2) == pytest.approx(0.060)


def test_cost_model_without_a_measurable_decode_uses_the_sampler_as_measured() -> None:
    cost = CostModel(smoothing=1.0)
    cost.update(batch=1, steps=4, sample_s=0.120, decode_s=0.0)
    assert cost.estimate(1, 4) == pytest.approx(0.120) and cost.estimate(1, 2) == pytest.approx(0.060)


#################################################################################
#                       The engine on a simulated machine                       #
#################################################################################


class Session:
    """One session fed in real time (virtual): chunk k's audio is complete at (k + 1) chunks + look-ahead and its
    first frame plays PLAYOUT_DELAY_S after its audio time."""

    def __init__(self, engine: Engine, pipe: FakePipeline, clock: VirtualClock) -> None:
        self.engine, self.pipe, self.clock = engine, pipe, clock
        self.steps: list[int] = []
        self.skipped = 0
        callbacks = SlotCallbacks(on_chunk=lambda chunk: self.steps.append(chunk.steps),
                                  on_skip=self._skip, deadline=lambda t: t + PLAYOUT_DELAY_S,
                                  frames_buffered=lambda: 0, on_error=lambda detail, fatal: None)
        self.slot = Slot(session_id="s", reference=pipe.encode_reference(np.zeros((8, 8, 3), np.uint8)),
                         options=FakeStreamOptions(), callbacks=callbacks)
        engine.add(self.slot)
        self.slot.stream = pipe.open_stream(self.slot.reference)
        self.spf = pipe.samples_per_frame
        self.fed = 0  # frames of audio pushed
        self._push(pipe.config.lookahead_frames)

    def _skip(self, frames: int) -> None:
        self.skipped += frames

    def _push(self, frames: int) -> None:
        self.engine.submit(self.slot, PushAudio(np.zeros(frames * self.spf, np.float32), False))
        self.fed += frames

    def chunk(self) -> None:
        """Wait for the next chunk's audio if it has not arrived yet, push all audio arrived by now, run one batch."""
        fps = self.pipe.config.fps
        self.clock.t = max(self.clock.t, (self.fed + self.pipe.config.chunk_frames) / fps)
        self._push(int(self.clock.t * fps + 1e-9) - self.fed)
        self.engine.step()


def set_load(pipe: FakePipeline, factor: float) -> None:
    """A call costs factor x (10 ms + steps x 15 ms sampler + 20 ms decode)."""
    pipe.sample_cost_s, pipe.step_cost_s, pipe.decode_cost_s = factor * 0.010, factor * 0.015, factor * 0.020


def simulated(load: float) -> tuple[Engine, FakePipeline, Session]:
    """A 2-step model on a machine at `load`."""
    clock = VirtualClock()
    pipe = FakePipeline(config=FakeConfig(chunk_frames=2, steps=2), sleep=clock.advance)
    set_load(pipe, load)
    engine = Engine(pipe, EngineSettings(deadline_margin_ms=0), clock=clock)
    return engine, pipe, Session(engine, pipe, clock)


def test_engine_leaves_the_first_call_of_a_batch_size_out_of_the_cost_model() -> None:
    engine, pipe, session = simulated(10.0)   # the first call (allocations, first-call kernels) is slow
    session.chunk()
    assert engine.cost.estimate(1, 2) == 0.0
    set_load(pipe, 1.0)
    for _ in range(6):                         # (the late session drops its backlog and catches up)
        session.chunk()
    assert session.steps[-1] == 2 and engine.cost.estimate(1, 2) == pytest.approx(0.060)


def test_engine_keeps_the_default_steps_when_they_fit_degrades_when_they_dont_and_recovers() -> None:
    """2 steps take 60 ms of an 80 ms chunk at load 1 and 90 ms at load 1.5 (1 step: 67.5 ms); the
    old rule (whole call / steps) never came back to 2 steps once it had run 1."""
    engine, pipe, session = simulated(1.0)
    for _ in range(16):
        session.chunk()
    assert session.steps == [2] * 16                               # fits: the default all along

    set_load(pipe, 1.5)
    for _ in range(15):
        session.chunk()
    loaded = session.steps[16:]
    assert loaded[0] == 2 and loaded[-8:] == [1] * 8               # degraded once 2 steps were measured too slow
    first_one = loaded.index(1)
    assert all(s == 1 for s in loaded[first_one:])                 # and stayed there while they do not fit
    assert engine.cost.estimate(1, 2) == pytest.approx(0.090, rel=0.05)
    assert engine.cost.estimate(1, 1) == pytest.approx(0.0675, rel=0.05)

    set_load(pipe, 1.0)
    for _ in range(15):
        session.chunk()
    recovered = session.steps[31:]
    assert recovered[-10:] == [2] * 10                             # back to the default within a few chunks
    assert session.skipped == 0                                    # and never held a frame


def test_engine_degrades_only_down_to_the_validated_steps() -> None:
    """One mechanism for both rules: at a load where even 1 step misses, a checkpoint validated down to
    2 steps keeps 2, and late sessions hold frames instead."""
    engine, pipe, session = simulated(1.0)
    engine.min_steps = 2
    set_load(pipe, 3.0)
    for _ in range(20):
        session.chunk()
    assert set(session.steps) == {2} and session.skipped > 0


class Observer:
    def __init__(self) -> None:
        self.calls: list[float] = []
        self.stages: list[dict[str, float]] = []
        self.degraded = 0

    def generate_call(self, seconds: float) -> None:
        self.calls.append(seconds)

    def degraded_chunks(self, count: int) -> None:
        self.degraded += count

    def chunk_stages(self, stages: dict[str, float]) -> None:
        self.stages.append(stages)


def test_engine_times_each_stage_of_a_chunk() -> None:
    clock = VirtualClock()
    pipe = FakePipeline(config=FakeConfig(chunk_frames=2, steps=2), sleep=clock.advance, sample_cost_s=0.01,
                        step_cost_s=0.015, decode_cost_s=0.02)
    observer = Observer()
    engine = Engine(pipe, EngineSettings(deadline_margin_ms=0), clock=clock, observer=observer)
    session = Session(engine, pipe, clock)     # look-ahead pushed at t = 0
    clock.t = 0.05                             # the chunk's audio arrives at 0.05 ...
    session._push(2)
    engine._apply_commands()
    clock.t = 0.07                             # ... the worker gets to it at 0.07
    engine._run_batch(engine._select())
    stages = observer.stages[0]
    assert stages["queue"] == pytest.approx(0.02)
    assert stages["sample"] == pytest.approx(0.04) and stages["decode"] == pytest.approx(0.02)
    assert stages["buffer"] == pytest.approx(PLAYOUT_DELAY_S - 0.13) and stages["late"] == 0.0
    assert observer.calls == [pytest.approx(0.06)]
    summary = session.slot.stage_summary()
    assert summary["sample"] == {"p50_ms": 40.0, "p95_ms": 40.0} and set(summary) == set(stages)

    clock.t = 0.42                             # the next chunk (plays at 0.08 + 0.3) starts late: 1 step, 45 ms
    session._push(2)
    engine._apply_commands()
    engine._run_batch(engine._select())
    assert session.steps == [2, 1] and observer.degraded == 1
    assert observer.stages[1]["late"] == pytest.approx(0.42 + 0.045 - 0.08 - PLAYOUT_DELAY_S)
    assert observer.stages[1]["buffer"] == 0.0


def test_metrics_observe_stages_when_they_happen() -> None:
    clock = VirtualClock()
    pipe = FakePipeline(config=FakeConfig(chunk_frames=2, steps=2), sleep=clock.advance, decode_cost_s=0.015)
    metrics = Metrics()
    engine = Engine(pipe, EngineSettings(), clock=clock, observer=metrics)
    session = Session(engine, pipe, clock)
    for _ in range(3):
        session.chunk()
    text = generate_latest(metrics.registry).decode()
    assert 'omnilive_stage_seconds_count{stage="decode"} 3.0' in text
    assert 'omnilive_stage_seconds_bucket{le="0.02",stage="decode"} 3.0' in text
    assert "omnilive_generate_seconds_count 3.0" in text
