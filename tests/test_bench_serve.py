"""`omnilive bench serve`: what counts as a served session, and clear errors for bad arguments."""

from avatar_server.commands.bench_serve import CAPACITY_LATENCY_P95_MS, session_served
from omnilive_cli.main import main


def row(fps: float = 25.0, generated: float = 25.0, p95: float | None = 240.0) -> dict:
    return {"fps": fps, "generated_fps": generated, "latency_ms_p95": p95}


def test_a_session_is_served_only_at_full_rate_and_within_the_latency_budget() -> None:
    floor = 0.95 * 25
    assert session_served(row(), floor, CAPACITY_LATENCY_P95_MS)
    assert not session_served(row(generated=23.0), floor, CAPACITY_LATENCY_P95_MS)  # frames held, not generated
    assert not session_served(row(fps=20.0), floor, CAPACITY_LATENCY_P95_MS)
    assert not session_served(row(p95=628.5), floor, CAPACITY_LATENCY_P95_MS)  # full rate, but half a second late
    assert not session_served(row(p95=None), floor, CAPACITY_LATENCY_P95_MS)  # no latency measured: not shown served
    assert session_served(row(p95=628.5), floor, 800.0)


def test_bad_arguments_are_clear_errors(capsys) -> None:
    assert main(["bench", "serve", "--find-capacity", "--max-latency-ms", "0"]) == 2
    assert "--max-latency-ms > 0" in capsys.readouterr().err
