"""`omnilive eval --checkpoint DIR --data DIR [--json]`: held-out figures, streaming as the server does."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from model.errors import InputError
from model.media import check_writable
from model.train.evaluate import (
    DEFAULT_READER,
    DEFAULT_REFERENCE,
    DEFAULT_STEPS,
    FRAMING_ORDER,
    HUMAN_VOICE_DIR,
    EvalSettings,
    evaluate,
    human_voice_recordings,
)

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `eval` parser."""
    parser = subparsers.add_parser(
        "eval", help="measure a checkpoint on held-out clips (lip sync, silence, PSNR/SSIM, seams, drift, sweep)",
        description="Stream held-out clips through the pipeline in 20 ms audio pieces gated by the server's "
                    "silero VAD, and measure the generated RGB frames against the ground truth.",
    )
    parser.add_argument("--checkpoint", required=True, help="pipeline folder (e.g. weights/tiny)")
    parser.add_argument("--data", required=True, help="dataset folder (index.json + clips/)")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test, unseen identities)")
    parser.add_argument("--framing", action="append", choices=FRAMING_ORDER,
                        help="only clips of this framing (repeatable; default: all, close-ups first)")
    parser.add_argument("--clips", type=int, default=4, help="clips for the main figures")
    parser.add_argument("--sweep-clips", type=int, default=1, help="clips per (steps, audio CFG) pair (0: no sweep)")
    parser.add_argument("--sweep-steps", default="1,2,4", help="comma-separated Euler step counts")
    parser.add_argument("--sweep-cfg", default="1,1.5,3", help="comma-separated audio CFG scales")
    parser.add_argument("--drift-minutes", type=float, default=5.0, help="length of the drift stream (0: skip)")
    parser.add_argument("--steps-list", default=f"{DEFAULT_STEPS},1",
                        help=f"step counts whose audio-only figures go under by_steps ({DEFAULT_STEPS}: the checkpoint's)")
    parser.add_argument("--human-voice", metavar="DIR",
                        help=f"recorded speech (*.wav, sorted) for the human-voice figure (default: {HUMAN_VOICE_DIR})")
    parser.add_argument("--no-human-voice", action="store_true", help="skip the human-voice figure")
    parser.add_argument("--reference", metavar="IMAGE", default=str(DEFAULT_REFERENCE),
                        help="the avatar picture that speaks the recordings (default: the server's default avatar)")
    parser.add_argument("--pause-s", type=float, default=1.0, help="silence after each recording, seconds")
    parser.add_argument("--save-video", metavar="PATH", help="write the human-voice video (default steps) as mp4")
    parser.add_argument("--reader", metavar="DIR", default=str(DEFAULT_READER),
                        help="the mouth reader that reads mouth openness on frames (default: weights/mouth-reader)")
    parser.add_argument("--dark-pixels", action="store_true",
                        help="read mouth openness as the share of dark pixels in the lip box instead of the reader")
    parser.add_argument("--no-vad", action="store_true", help="push all audio as voiced (no silero-vad gating)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def _numbers(text: str, kind: type) -> tuple:
    """'1,2,4' -> (1, 2, 4); InputError on anything else."""
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError as error:
        raise InputError(f"expected comma-separated numbers, got {text!r}") from error
    if not values:
        raise InputError(f"expected at least one number, got {text!r}")
    return values


def _steps_list(text: str) -> tuple[int | None, ...]:
    """'DEFAULT,1' -> (None, 1); InputError on anything else."""
    values: list[int | None] = []
    for item in (v.strip() for v in text.split(",") if v.strip()):
        if item.upper() == DEFAULT_STEPS:
            values.append(None)
            continue
        (steps,) = _numbers(item, int)
        if steps < 1:
            raise InputError(f"--steps-list: step counts must be >= 1, got {steps}")
        values.append(steps)
    if not values:
        raise InputError(f"--steps-list: expected step counts, got {text!r}")
    return tuple(values)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the figures."""
    checkpoint, data = Path(args.checkpoint), Path(args.data)
    if not checkpoint.is_dir():
        raise InputError(f"checkpoint folder not found: {checkpoint}")
    if not data.is_dir():
        raise InputError(f"dataset folder not found: {data}")
    if args.clips < 1 or args.sweep_clips < 0 or args.drift_minutes < 0:
        raise InputError("--clips must be >= 1, --sweep-clips and --drift-minutes >= 0")
    if args.pause_s < 0:
        raise InputError("--pause-s must be >= 0")
    recordings = () if args.no_human_voice else human_voice_recordings(Path(args.human_voice) if args.human_voice else None)
    if not recordings and not args.no_human_voice:
        logger.warning("no recordings in %s: the human-voice figure is skipped", HUMAN_VOICE_DIR)
    reference = Path(args.reference)
    if recordings and not reference.is_file():
        raise InputError(f"reference image not found: {reference}")
    save_video = check_writable(args.save_video) if args.save_video else None
    if save_video is not None and not recordings:
        raise InputError("--save-video writes the human-voice video: give recordings (--human-voice DIR)")
    settings = EvalSettings(split=args.split, clips=args.clips, sweep_clips=args.sweep_clips,
                            sweep_steps=_numbers(args.sweep_steps, int), sweep_audio_cfg=_numbers(args.sweep_cfg, float),
                            drift_minutes=args.drift_minutes, seed=args.seed,
                            framings=tuple(args.framing) if args.framing else None,
                            steps_list=_steps_list(args.steps_list), human_voice=recordings, reference=reference,
                            pause_s=args.pause_s, save_video=save_video,
                            reader=None if args.dark_pixels else Path(args.reader))
    make_activity = None
    if not args.no_vad:
        from avatar_server.settings import VADSettings
        from avatar_server.vad import make_activity as server_activity

        def make_activity():
            return server_activity(VADSettings())
    result = evaluate(checkpoint, data, settings, make_activity)
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        summary = {k: v for k, v in result.items() if k not in ("per_clip", "sweep")}  # by_steps, human_voice kept
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0
