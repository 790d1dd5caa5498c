"""The HTTP and WebSocket routes, one router per resource (docs/architecture.md "Server API").

sessions  POST /v1/sessions, GET/DELETE /v1/sessions/{id}, GET /v1/ice-servers
whep      POST /v1/whep
sockets   WS /v1/sessions/{id}/events and /audio
avatars   POST/GET /v1/avatars, DELETE /v1/avatars/{id}
tokens    POST /v1/tokens
probes    /healthz, /readyz, /metrics
pages     /, /overlay, /client/

Each router checks credentials once, as a router-level dependency (avatar_server.routes.dependencies); the
sockets check theirs when they open (`?token=`, closing with a code a browser can read).
"""

API_PREFIX = "/v1"
