"""`omnilive bench stream --json`: one JSON object with the speed fields and cached == naive."""

import json

from omnilive_cli import bench_stream
from omnilive_cli.main import main
from pipeline_helpers import write_micro_yaml

FIELDS = {
    "config", "device", "fps_target", "chunk_frames", "steps", "ms_per_chunk_p50", "rtf",
    "naive_ms_per_chunk_p50", "cache_speedup", "max_abs_diff_vs_naive", "params", "random_init",
    "torch_threads", "compared_chunks", "sessions", "note",
}


def test_bench_stream_json(tmp_path, capsys):
    sessions = 2
    config = write_micro_yaml(tmp_path / "micro.yaml")
    argv = ["bench", "stream", "--config", str(config), "--random-init", "--chunks", "2",
            "--sessions", str(sessions), "--json"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert FIELDS <= result.keys()
    assert result["config"] == "micro" and result["sessions"] == sessions
    assert result["random_init"] is True and "speed" in result["note"]
    assert result["compared_chunks"] >= 5
    assert result["max_abs_diff_vs_naive"] <= 1e-4
    assert result["ms_per_chunk_p50"] > 0 and result["rtf"] > 0
    assert result["params"]["total"] == result["params"]["dit"] + result["params"]["vae"] > 0


def test_bench_stream_summary_and_bad_arguments(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench_stream, "MIN_COMPARED_CHUNKS", 1)  # the summary's wording only: keep it short
    config = write_micro_yaml(tmp_path / "micro.yaml")
    assert main(["bench", "stream", "--config", str(config), "--random-init", "--chunks", "1"]) == 0
    out = capsys.readouterr().out
    assert "RTF" in out and "cache speedup" in out and "random init" in out
    assert main(["bench", "stream", "--random-init", "--chunks", "0"]) == 2
    assert "--chunks must be >= 1" in capsys.readouterr().err
