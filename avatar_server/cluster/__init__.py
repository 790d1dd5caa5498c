"""Scale-out on Ray: one front (the public API) and a pool of avatar workers, each owning one device.

settings   ClusterSettings: configs/server/cluster.yaml + OMNILIVE_CLUSTER__* variables
worker     AvatarWorker: the Ray actor that runs the single-process server (app, engine, WebRTC peers)
placement  admission: least-loaded worker with a free slot, reservations taken atomically on the event loop
pool       the workers' Ray actors: health, restart detection, avatars pushed to every worker
proxy      HTTP and WebSocket forwarding from the front to the worker that owns a session
metrics    pool-wide and per-worker figures for the front's /metrics
front      the front's FastAPI app: the same routes as `omnilive serve`, backed by the pool
serve      `omnilive serve --cluster ADDRESS`

This package is the only one that imports ray (tests/test_import_graph.py checks it); see docs/cluster.md.
"""
