"""Write a VAE training config's frames as a frame pack, to carry to a lent GPU machine.

    .venv/bin/python scripts/pack_vae_frames.py --config configs/train/vae-tiny-face-gpu.yaml --out shipped/pack
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.errors import InputError
from model.train.config import VaeTrainConfig, load_train_config
from model.train.vae_trainer import pack_frames


def main() -> int:
    """Parse the arguments and write the pack; 2 on a bad config."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a `kind: vae` training config")
    parser.add_argument("--out", required=True, help="folder to write the pack into")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        config = load_train_config(args.config)
        if not isinstance(config, VaeTrainConfig):
            raise InputError(f"{args.config} is not a `kind: vae` config")
        pack_frames(config, Path(args.out))
    except InputError as error:
        logging.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
