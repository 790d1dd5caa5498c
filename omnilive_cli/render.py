"""`omnilive render`: reference image + audio (+ pose, + text) -> mp4 (H.264 + AAC), offline."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from model.config import AudioSection
from model.data.keypoints import NUM_KEYPOINTS
from model.errors import InputError
from model.media import Mp4Writer, check_writable, load_audio, load_image, load_pose
from model.pipeline import DEFAULT_CHECKPOINT, AvatarPipeline

logger = logging.getLogger(__name__)

SAMPLE_RATE = AudioSection().sample_rate  # the model's audio rate (fixed at 16 kHz by the config schema)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `render` parser."""
    parser = subparsers.add_parser(
        "render", help="render a talking-body video from a reference image and audio",
        description="Render an mp4 (H.264 + AAC, audio in sync) from a reference image and an audio file.",
    )
    parser.add_argument("--image", required=True, help="reference image (PNG, JPEG, ...)")
    parser.add_argument("--audio", required=True, help="audio file (WAV, MP3, FLAC, or a video with audio)")
    parser.add_argument("--pose", help="keypoints .npz (xy [T, K, 2] in [0, 1], visibility [T, K]) to drive the body")
    parser.add_argument("--text", help="text prompt describing the scene or motion")
    parser.add_argument("--checkpoint", help=f"checkpoint folder (default: {DEFAULT_CHECKPOINT} when it exists)")
    parser.add_argument("--random-init", action="store_true",
                        help="use untrained random weights of --config instead of a checkpoint (smoke test only)")
    parser.add_argument("--config", default="tiny", help="model config for --random-init (tiny, base, large or a .yaml)")
    parser.add_argument("--out", required=True, help="output .mp4 path")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--steps", type=int, help="Euler steps (default: the model config's)")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    parser.set_defaults(func=run)


def load_pipeline(args: argparse.Namespace) -> AvatarPipeline:
    """The pipeline chosen by --checkpoint / --random-init, or the default checkpoint."""
    if args.random_init:
        if args.checkpoint:
            raise InputError("pass either --checkpoint or --random-init, not both")
        logger.warning("--random-init: untrained weights, the video shows no person (smoke test only)")
        return AvatarPipeline.from_config(args.config, seed=args.seed, device=args.device)
    checkpoint = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT
    if not args.checkpoint and not checkpoint.is_dir():
        raise InputError(
            f"no trained model at {checkpoint}: train one (`omnilive train`), pass --checkpoint DIR, "
            "or use --random-init for an untrained smoke test"
        )
    return AvatarPipeline.from_pretrained(checkpoint, device=args.device)


def run(args: argparse.Namespace) -> int:
    """Validate every input, render, and write the mp4."""
    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be >= 1, got {args.steps}")
    out = check_writable(args.out)
    image = load_image(args.image)
    audio = load_audio(args.audio, SAMPLE_RATE)
    pose = load_pose(args.pose, NUM_KEYPOINTS) if args.pose else None
    pipe = load_pipeline(args)
    chunks = pipe.iter_render(image, audio, pose=pose, text=args.text, seed=args.seed, steps=args.steps)
    with Mp4Writer(out, pipe.config.fps, audio, pipe.config.sample_rate) as writer:
        for frames in chunks:
            writer.write(frames)
    logger.info("rendered %d frames (%.2f s) to %s", writer.frames_written, writer.frames_written / pipe.config.fps, out)
    return 0
