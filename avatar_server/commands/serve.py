"""`omnilive serve`: the real-time WebRTC avatar server (FastAPI on uvicorn, uvloop, websockets)."""

from __future__ import annotations

import argparse
import logging

from avatar_server.settings import DEFAULT_CONFIG, load_settings

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="run the WebRTC avatar server",
                                   description="Serve live avatars over WebRTC (see docs/server.md).")
    parser.add_argument("--config", default=None,
                        help=f"server settings YAML (default: $OMNILIVE_CONFIG or {DEFAULT_CONFIG.name})")
    parser.add_argument("--host", default=None, help="bind address (overrides the config)")
    parser.add_argument("--port", type=int, default=None, help="port (overrides the config)")
    parser.add_argument("--weights", default=None, help="checkpoint folder (overrides model.weights)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (overrides model.device)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate the settings, load the model, serve until interrupted."""
    import uvicorn

    from avatar_server.app import create_app
    from avatar_server.http import uvicorn_config
    from avatar_server.runtime import load_pipeline

    model = {k: v for k, v in (("weights", args.weights), ("device", args.device)) if v is not None}
    settings = load_settings(args.config, host=args.host, port=args.port, model=model)
    handle = load_pipeline(settings)
    app = create_app(settings, handle)
    config = uvicorn_config(app, settings)
    logger.info("serving on http://%s:%d (demo page at /)", settings.host, settings.port)
    uvicorn.Server(config).run()
    return 0
