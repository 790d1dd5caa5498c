"""`omnilive serve --cluster ADDRESS`: the front on this machine, the workers wherever Ray places them."""

from __future__ import annotations

import logging

from avatar_server.cluster.front import create_front
from avatar_server.cluster.pool import connect
from avatar_server.cluster.settings import ClusterSettings
from avatar_server.settings import ServerSettings

logger = logging.getLogger(__name__)


def serve_cluster(settings: ServerSettings, cluster: ClusterSettings) -> int:
    """Serve the front until interrupted; each worker loads the configured model on its own device."""
    import uvicorn

    from avatar_server.http import uvicorn_config
    from avatar_server.runtime import load_pipeline

    connect(cluster)  # on the main thread, where Ray installs its signal handlers
    app = create_front(settings, cluster, load_pipeline)
    logger.info("cluster front on http://%s:%d, %d workers on Ray at %s", settings.host, settings.port,
                cluster.workers, cluster.address)
    uvicorn.Server(uvicorn_config(app, settings)).run()
    return 0
