"""`omnilive eval --checkpoint DIR --data DIR [--json]`: held-out figures, streaming as the server does."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from model.errors import InputError
from model.train.evaluate import FRAMING_ORDER, EvalSettings, evaluate

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


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the figures."""
    checkpoint, data = Path(args.checkpoint), Path(args.data)
    if not checkpoint.is_dir():
        raise InputError(f"checkpoint folder not found: {checkpoint}")
    if not data.is_dir():
        raise InputError(f"dataset folder not found: {data}")
    if args.clips < 1 or args.sweep_clips < 0 or args.drift_minutes < 0:
        raise InputError("--clips must be >= 1, --sweep-clips and --drift-minutes >= 0")
    settings = EvalSettings(split=args.split, clips=args.clips, sweep_clips=args.sweep_clips,
                            sweep_steps=_numbers(args.sweep_steps, int), sweep_audio_cfg=_numbers(args.sweep_cfg, float),
                            drift_minutes=args.drift_minutes, seed=args.seed,
                            framings=tuple(args.framing) if args.framing else None)
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
        summary = {k: v for k, v in result.items() if k not in ("per_clip", "sweep")}
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0
