"""Train from a `kind: vae` config on a machine that has only the model's dependencies (a lent GPU image).

    python3 scripts/train_bare.py --config configs/train/vae-tiny-face-gpu.yaml --set data.pack=PACK ...
The same as `omnilive train` for that kind, without the server's packages; `--block-pyav` hides PyAV
so a CPU machine can check the OpenCV decode path the GPU image uses.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    """Parse, train, print the final figures as JSON; 2 on a bad config."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default=None)
    parser.add_argument("--block-pyav", action="store_true")
    args = parser.parse_args()
    if args.block_pyav:
        sys.modules["av"] = None  # type: ignore[assignment]  # import av now raises ModuleNotFoundError
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from model.errors import InputError
    from model.train.config import VaeTrainConfig, load_train_config
    from model.train.distributed import init_distributed
    from model.train.vae_trainer import train_vae
    from model.yaml_config import parse_overrides

    try:
        config = load_train_config(args.config, parse_overrides(args.set))
        if not isinstance(config, VaeTrainConfig):
            raise InputError(f"{args.config}: only `kind: vae` configs run here")
        result = train_vae(config, init_distributed(args.device), resume=False)
    except InputError as error:
        logging.error("%s", error)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
