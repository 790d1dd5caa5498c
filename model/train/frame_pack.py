"""A frame pack: the VAE trainer's frames in a folder small enough to carry to a lent GPU machine.

```
PACK/pack.json              {"train": [{"id", "height", "width"}...], "heldout": [...]}
PACK/<split>/<id>.mp4       the clip's video as the dataset holds it (H.264 is ~50x smaller than the pixels)
PACK/<split>.npz            per clip i: picks_i [N] frame indices, weights_i [N, 1, h, w] float16, lips_i [N, L, 2]
```
The region weights are computed where the pack is written (they need the keypoints, which are
larger than the videos), so a pack belongs to one loss config. Reading needs neither the dataset
nor the studio, and decodes with PyAV or, on an image without it, OpenCV (H.264 through FFmpeg
either way; colour conversion may differ by one level).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from model.data import format as fmt
from model.errors import InputError
from model.train.frames import resize_frames

logger = logging.getLogger(__name__)

PACK_FILE = "pack.json"
SPLITS = ("train", "heldout")


def write_frame_pack(root: Path, splits: dict[str, list[fmt.IndexEntry]], pools: dict, out: Path) -> None:
    """Write the pools built from `root` (split -> FramePool with `picks`) and their clips' videos to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    listing: dict[str, list[dict]] = {}
    for split, entries in splits.items():
        pool = pools[split]
        (out / split).mkdir(exist_ok=True)
        arrays = {}
        for index, entry in enumerate(entries):
            shutil.copyfile(fmt.clip_dir(root, entry.id) / fmt.VIDEO_FILE, out / split / f"{entry.id}.mp4")
            arrays[f"picks_{index}"] = pool.picks[index]
            arrays[f"weights_{index}"] = pool.weights[index].numpy().astype(np.float16)
            arrays[f"lips_{index}"] = pool.lips[index]
        np.savez_compressed(out / f"{split}.npz", **arrays)
        listing[split] = [{"id": e.id, "height": int(pool.frames[i].shape[-2]), "width": int(pool.frames[i].shape[-1])}
                          for i, e in enumerate(entries)]
    (out / PACK_FILE).write_text(json.dumps(listing, indent=1))
    logger.info("frame pack written to %s: %s", out, {s: len(v) for s, v in listing.items()})


def decode_video(path: Path) -> np.ndarray:
    """uint8 [T, H, W, 3] RGB frames of an mp4, through PyAV where installed, else OpenCV."""
    try:
        return fmt.read_video(path)
    except ModuleNotFoundError:
        import cv2

        capture = cv2.VideoCapture(str(path))
        frames = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        capture.release()
        if not frames:
            raise InputError(f"{path}: no frames could be decoded") from None
        return np.stack(frames)


def read_frame_pack(pack: Path, split: str) -> tuple[list[torch.Tensor], list[torch.Tensor], list[np.ndarray]]:
    """(frames uint8 [N, 3, h, w], weights [N, 1, h, w], lips [N, L, 2]) per clip of one split of a pack."""
    if split not in SPLITS:
        raise InputError(f"a frame pack has the splits {SPLITS}, not {split!r}")
    listing_file = pack / PACK_FILE
    if not listing_file.is_file():
        raise InputError(f"{pack} is not a frame pack (no {PACK_FILE})")
    listing = json.loads(listing_file.read_text())[split]
    frames, weights, lips = [], [], []
    with np.load(pack / f"{split}.npz") as arrays:
        for index, clip in enumerate(listing):
            picks = arrays[f"picks_{index}"]
            video = decode_video(pack / split / f"{clip['id']}.mp4")
            frames.append(resize_frames(video[picks], clip["height"], clip["width"]))
            weights.append(torch.from_numpy(arrays[f"weights_{index}"].astype(np.float32)))
            lips.append(arrays[f"lips_{index}"])
    return frames, weights, lips
