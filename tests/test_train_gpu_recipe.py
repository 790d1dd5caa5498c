"""scripts/train_gpu.sh, the one-command GPU recipe, checked on the CPU with a few steps of every stage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from model.pipeline import FALLBACK_MOUTH, AvatarPipeline

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_recipe_runs_every_stage_and_writes_one_pipeline_folder(tmp_path: Path) -> None:
    """QUICK=1: synthesize 12 clips, a few steps of decoder, motion, locator and guide DiT; OUT/pipeline renders."""
    env = {**os.environ, "QUICK": "1", "WORKERS": "1", "OMNILIVE": str(Path(sys.executable).parent / "omnilive")}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "train_gpu.sh"), str(tmp_path / "out")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "out" / "pipeline"
    assert {p.name for p in folder.iterdir()} >= {"dit", "vae", "motion", "locator", "pipeline.json", "training.json"}
    pipe = AvatarPipeline.from_pretrained(folder)
    assert pipe.guided and pipe.motion is not None and pipe.locator is not None
    avatar = Image.open(ROOT / "avatar_server" / "assets" / "default_avatar.png").convert("RGB")
    stream = pipe.open_stream(pipe.encode_reference(avatar, mouth=FALLBACK_MOUTH))  # 3 locator steps find no mouth
    stream.push_audio(np.zeros(6400, np.float32))
    chunk = pipe.generate([stream])[0]
    assert chunk.frames.shape == (pipe.config.chunk_frames, 128, 128, 3) and chunk.mouth_open is not None
