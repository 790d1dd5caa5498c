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
    parser.add_argument("--cluster", default=None, metavar="ADDRESS",
                        help="serve a pool of workers on Ray: auto, ray://HEAD:10001 or local (docs/cluster.md)")
    parser.add_argument("--cluster-config", default=None, metavar="FILE",
                        help="pool settings YAML (default configs/server/cluster.yaml)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate the settings, load the model, serve until interrupted."""
    import uvicorn

    from avatar_server.app import create_app
    from avatar_server.http import uvicorn_config
    from avatar_server.runtime import load_pipeline

    model = {k: v for k, v in (("weights", args.weights), ("device", args.device)) if v is not None}
    settings = load_settings(args.config, host=args.host, port=args.port, model=model)
    if args.cluster is not None or args.cluster_config is not None:  # Ray is imported in cluster mode only
        from avatar_server.cluster.serve import serve_cluster
        from avatar_server.cluster.settings import load_cluster_settings

        return serve_cluster(settings, load_cluster_settings(args.cluster_config, address=args.cluster))
    handle = load_pipeline(settings)
    app = create_app(settings, handle)
    config = uvicorn_config(app, settings)
    logger.info("serving on http://%s:%d (demo page at /)", settings.host, settings.port)
    uvicorn.Server(config).run()
    return 0
