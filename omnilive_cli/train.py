"""`omnilive train --config configs/train/NAME.yaml`: train the frame VAE, the DiT (omni-conditions), the audio->motion
model, the mouth locator, the person matte or the mouth reader (an evaluation instrument)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from model.errors import InputError
from model.train.config import (
    DitTrainConfig,
    LocatorTrainConfig,
    MatteTrainConfig,
    MotionTrainConfig,
    ReaderTrainConfig,
    load_train_config,
)
from model.train.distributed import init_distributed, launch, shutdown_distributed
from model.yaml_config import parse_overrides

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` parser."""
    parser = subparsers.add_parser(
        "train", help="train the frame VAE, the DiT, the audio->motion model, the mouth locator, the person matte or the mouth reader",
        description="Train from configs/train/*.yaml (kind: vae, dit, motion, locator, matte or reader). Resumes from the newest checkpoint "
                    "in the run's output_dir unless --no-resume. Multi-process: --nproc N here, or torchrun.",
    )
    parser.add_argument("--config", required=True, help="training config YAML (e.g. configs/train/tiny.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set run.steps=100 (YAML value syntax)")
    parser.add_argument("--no-resume", action="store_true", help="start from scratch even if checkpoints exist")
    parser.add_argument("--until", type=int, metavar="STEP",
                        help="stop at this global step with a checkpoint (resume later with the same command)")
    parser.add_argument("--export", metavar="DIR", nargs="?", const="",
                        help="do not train: write the newest checkpoint's EMA weights as a pipeline folder "
                             "(DIR, default: the config's export_dir)")
    parser.add_argument("--from", dest="export_from", metavar="CHECKPOINT",
                        help="with --export: this checkpoint folder (runs/NAME/checkpoints/step-N) instead of the newest")
    parser.add_argument("--nproc", type=int, default=1, help="processes on this machine (DDP; gloo on CPU)")
    parser.add_argument("--device", help="torch device (default: cuda:LOCAL_RANK if available, else cpu)")
    parser.add_argument("--json", action="store_true", help="print the final figures as one JSON object")
    parser.set_defaults(func=run)


def train_entry(
    config_path: str, overrides: dict, resume: bool, until: int | None, device: str | None, result_path: str | None
) -> None:
    """Body of one training process (also the target of --nproc spawning)."""
    config = load_train_config(config_path, overrides)
    ctx = init_distributed(device)
    try:
        if isinstance(config, DitTrainConfig):
            from model.train.trainer import train_dit
            result = train_dit(config, ctx, resume=resume, until=until)
        elif isinstance(config, MotionTrainConfig):
            from model.train.motion_trainer import train_motion
            result = train_motion(config)
        elif isinstance(config, ReaderTrainConfig):
            from model.train.reader_trainer import train_reader
            result = train_reader(config)
        elif isinstance(config, MatteTrainConfig):
            from model.train.matte_trainer import train_matte
            result = train_matte(config)
        elif isinstance(config, LocatorTrainConfig):
            from model.train.locator_trainer import train_locator
            result = train_locator(config, ctx, resume=resume, until=until)
        else:
            from model.train.vae_trainer import train_vae
            result = train_vae(config, ctx, resume=resume, until=until)
        if ctx.is_main and result_path:
            with open(result_path, "w") as handle:
                json.dump(result, handle)
    finally:
        shutdown_distributed()


def run(args: argparse.Namespace) -> int:
    """Validate the config up front (clear errors), then train in 1..N processes."""
    overrides = parse_overrides(args.set)
    config = load_train_config(args.config, overrides)
    if args.nproc < 1:
        raise InputError("--nproc must be >= 1")
    if args.export is not None:
        if not isinstance(config, DitTrainConfig):
            raise InputError("--export applies to DiT training configs (kind: dit)")
        from model.train.export import export_latest
        try:
            result = export_latest(config, Path(args.export) if args.export else None,
                                   Path(args.export_from) if args.export_from else None)
        except FileNotFoundError as error:
            raise InputError(str(error)) from error
        if args.json:
            sys.stdout.write(json.dumps(result) + "\n")
        else:
            logger.info("exported: %s", result)
        return 0
    logger.info("training %s (%s) -> %s", args.config, config.kind, config.run.output_dir)
    result_path = f"{config.run.output_dir}/result.json"
    Path(config.run.output_dir).mkdir(parents=True, exist_ok=True)
    launch(train_entry, (args.config, overrides, not args.no_resume, args.until, args.device, result_path), args.nproc)
    result = json.loads(Path(result_path).read_text()) if Path(result_path).is_file() else {}
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        logger.info("done: %s", json.dumps(result))
    return 0
