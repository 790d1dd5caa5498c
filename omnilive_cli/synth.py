"""`omnilive synth`: render a synthetic talking-body dataset (deterministic by seed)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from pydantic import ValidationError

from model.data.studio.config import StudioConfig, load_studio_config
from model.data.studio.render import synthesize
from model.errors import InputError

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `synth` subcommand."""
    parser = subparsers.add_parser(
        "synth", help="render synthetic talking-body clips into the dataset format",
        description="Render stylized people who talk (espeak-ng / flite speech, audio-driven motion, captions) "
                    "with per-frame keypoints, into DIR/clips/<id>/ and DIR/index.json. Same seed, same bytes. "
                    "Clips already in DIR are kept, so an interrupted run resumes.")
    parser.add_argument("--out", required=True, help="dataset folder to write")
    parser.add_argument("--clips", type=int, required=True, help="number of clips (clip ids 0..N-1 of the seed)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--workers", type=int, default=1, help="parallel render processes (default 1)")
    parser.add_argument("--size", type=int, default=None, help="short side of the frames in pixels (default 256)")
    parser.add_argument("--config", default=None, help="YAML file overriding StudioConfig fields")
    parser.add_argument("--json", action="store_true", help="print one JSON summary object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Render the clips and report throughput."""
    config = load_studio_config(args.config)
    if args.size is not None:
        try:
            config = StudioConfig.model_validate({**config.model_dump(), "short_side": args.size})
        except ValidationError as error:
            raise InputError(f"--size {args.size} is invalid: {error.errors()[0]['msg']}") from error

    def progress(done: int, total: int) -> None:
        if done % 10 == 0 or done == total:
            logger.info("synth: %d/%d clips", done, total)

    summary = synthesize(args.out, args.clips, args.seed, args.workers, config, progress)
    if args.json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        logger.info("synth: %s", summary)
    return 0
