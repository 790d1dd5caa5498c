"""Ground-truth checks of a dataset: mouth openness vs. speech envelope, frame count vs. audio length.

    python -m model.data.checks DATASET [--clips 50]     # prints one JSON object
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from model.data import format as fmt
from model.data.studio.motion import frame_rms


def mouth_envelope_correlation(root: str | Path, clips: int | None = None) -> dict:
    """Pearson r between per-frame mouth_open and the audio RMS envelope, per clip and pooled."""
    index = fmt.read_index(Path(root))
    per_clip, mouths, envelopes, length_errors = [], [], [], []
    for entry in index.clips[:clips]:
        path = fmt.clip_dir(root, entry.id)
        if not (path / fmt.AUDIO_FILE).is_file() or not (path / fmt.KEYPOINTS_FILE).is_file():
            continue
        audio, rate = fmt.read_audio(path / fmt.AUDIO_FILE)
        mouth = fmt.read_keypoints(path / fmt.KEYPOINTS_FILE).mouth_open
        length_errors.append(abs(len(audio) / rate * fmt.FPS - len(mouth)))
        envelope = frame_rms(audio, rate // fmt.FPS, len(mouth))
        mouths.append(mouth)
        envelopes.append(envelope)
        if mouth.std() > 0 and envelope.std() > 0:
            per_clip.append(float(np.corrcoef(mouth, envelope)[0, 1]))
    if not mouths:
        return {"clips": 0}
    pooled = float(np.corrcoef(np.concatenate(mouths), np.concatenate(envelopes))[0, 1])
    return {"clips": len(mouths), "clips_with_speech": len(per_clip),
            "per_clip_mean_r": round(float(np.mean(per_clip)), 4) if per_clip else None,
            "per_clip_min_r": round(float(np.min(per_clip)), 4) if per_clip else None,
            "pooled_r": round(pooled, 4), "max_frame_count_error": float(max(length_errors))}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: print the checks as one JSON object."""
    parser = argparse.ArgumentParser(prog="python -m model.data.checks", description=__doc__)
    parser.add_argument("dataset")
    parser.add_argument("--clips", type=int, default=50, help="first N clips of the index (default 50)")
    args = parser.parse_args(argv)
    sys.stdout.write(json.dumps(mouth_envelope_correlation(args.dataset, args.clips)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
