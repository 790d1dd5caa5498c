"""`omnilive prep`: turn a folder of real videos into the dataset format, with quality flags."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from pydantic import ValidationError

from model.data.prep import PrepConfig, load_pose_extractor, prepare
from model.errors import InputError

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `prep` subcommand."""
    parser = subparsers.add_parser(
        "prep", help="prepare real videos as dataset clips",
        description="Decode every file under --in with PyAV, resample to 25 fps and 16 kHz mono, crop and resize "
                    "into aspect buckets, flag audio/speech/motion, and write clips + index.json into --out. "
                    "Unusable files are skipped and listed with a reason (also in OUT/prep-report.json). "
                    "A sidecar NAME.txt next to a video becomes its caption; files in a subfolder share "
                    "the subfolder's name as identity.")
    parser.add_argument("--in", dest="in_dir", required=True, help="folder of videos")
    parser.add_argument("--out", required=True, help="dataset folder to write")
    parser.add_argument("--size", type=int, default=256, help="short side of the output frames (default 256)")
    parser.add_argument("--segment-seconds", type=float, default=10.0, help="cut longer videos into clips this long")
    parser.add_argument("--pose-extractor", default=None,
                        help="'package.module:callable' mapping frames uint8 [T,H,W,3] to model.data.format.Keypoints")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Prepare the folder; exit 0 even when some files were skipped (they are in the report)."""
    try:
        config = PrepConfig(short_side=args.size, segment_seconds=args.segment_seconds)
    except ValidationError as error:
        raise InputError(f"invalid option: {error.errors()[0]['loc'][0]} {error.errors()[0]['msg']}") from error
    report = prepare(args.in_dir, args.out, config, load_pose_extractor(args.pose_extractor))
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        logger.info("prep: %d of %d files usable, %d clips, %d failures", report["usable"], report["inputs"],
                    len(report["clips"]), report["failed"])
        for failure in report["failures"]:
            logger.info("prep: skipped %s: %s", failure["file"], failure["reason"])
    return 0
