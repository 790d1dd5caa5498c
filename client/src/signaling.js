// HTTP signaling with the omnilive server: ICE servers, sessions, WebSocket URLs.

import { AvatarError, ErrorCode, errorFromResponse } from './errors.js';

/** Default per-request timeout (ms) before a request counts as "server unreachable". */
export const REQUEST_TIMEOUT_MS = 10000;

/** Resolve the server base URL ('' or undefined = the page's own origin). */
export function resolveServer(server) {
  const origin = globalThis.location?.origin;
  const base = server || origin;
  if (!base) {
    throw new AvatarError(ErrorCode.INVALID_OPTIONS, 'connect(): `server` is required outside a web page');
  }
  try {
    const url = new URL(base, origin);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(url.protocol);
    return url.href.endsWith('/') ? url.href : `${url.href}/`;
  } catch (error) {
    throw new AvatarError(ErrorCode.INVALID_OPTIONS, `connect(): bad server URL ${JSON.stringify(server)}`, { cause: error });
  }
}

/** The REST + WebSocket side of one server, with the token applied to every call. */
export class Signaling {
  /**
   * @param {{server: string, token?: string|null, fetch?: typeof fetch, timeoutMs?: number}} options
   */
  constructor({ server, token = null, fetch = globalThis.fetch?.bind(globalThis), timeoutMs = REQUEST_TIMEOUT_MS }) {
    this.base = resolveServer(server);
    this.token = token || null;
    this.fetch = fetch;
    this.timeoutMs = timeoutMs;
  }

  /** Absolute http(s) URL of a server path ('/v1/...' or already absolute). */
  url(path) {
    return new URL(path.replace(/^\//, ''), this.base).href;
  }

  /** ws(s) URL for a server path, carrying a token as `?token=` (browsers cannot set headers). */
  socketUrl(path, token = this.token) {
    const url = new URL(path.replace(/^\//, ''), this.base);
    url.protocol = url.protocol === 'https:' ? 'wss:' : url.protocol === 'http:' ? 'ws:' : url.protocol;
    if (token) url.searchParams.set('token', token);
    return url.href;
  }

  /** GET /v1/ice-servers -> RTCIceServer[] (fetched before every offer). */
  async iceServers() {
    const response = await this.request('GET', '/v1/ice-servers', undefined, 'fetch ICE servers');
    const body = await response.json();
    return (body.ice_servers ?? []).map(toRtcIceServer);
  }

  /**
   * POST /v1/sessions with the offer; returns the parsed answer.
   * @param {Record<string, unknown>} body {sdp, type: 'offer', avatar, text?, fps?, ...}
   */
  async createSession(body) {
    const response = await this.request('POST', '/v1/sessions', body, 'create session');
    const answer = await response.json();
    if (!answer.session_id || !answer.sdp) {
      throw new AvatarError(ErrorCode.SERVER_ERROR, 'create session: the answer lacks session_id or sdp');
    }
    const id = encodeURIComponent(answer.session_id);
    return {
      sessionId: answer.session_id,
      sdp: answer.sdp,
      iceServers: (answer.ice_servers ?? []).map(toRtcIceServer),
      eventsUrl: answer.events_url ?? `/v1/sessions/${id}/events`,
      audioUrl: answer.audio_url ?? `/v1/sessions/${id}/audio`,
      location: response.headers?.get?.('location') ?? `/v1/sessions/${id}`,
      /** Short-lived token the server issues when auth is on: used on the sockets instead of the API key. */
      token: answer.token ?? null,
    };
  }

  /** DELETE /v1/sessions/{id}; best effort (keepalive so it survives page unload), never throws. */
  async deleteSession(sessionId, token = null) {
    try {
      await this.request('DELETE', `/v1/sessions/${encodeURIComponent(sessionId)}`, undefined, 'end session', { keepalive: true }, token);
      return true;
    } catch {
      return false;
    }
  }

  /** GET /v1/avatars -> [{id, ...}] (accepts a bare list or {avatars: [...]}). */
  async listAvatars() {
    const response = await this.request('GET', '/v1/avatars', undefined, 'list avatars');
    const body = await response.json();
    const list = Array.isArray(body) ? body : body.avatars ?? [];
    return list.map((item) => (typeof item === 'string' ? { id: item } : item));
  }

  /**
   * POST /v1/avatars (multipart: `image`, optional `name`, `mouth`) -> the stored avatar.
   * @param {Blob} image
   * @param {string} [name]
   * @param {{x: number, y: number, width: number}} [mouth] the closed mouth (lip-line centre and corner-to-corner
   *   width, fractions of the image), for pictures whose mouth the server's locator misreads
   */
  async uploadAvatar(image, name, mouth) {
    const form = new FormData();
    form.append('image', image, image.name ?? 'avatar.png');
    if (name) form.append('name', name);
    if (mouth) form.append('mouth', `${mouth.x},${mouth.y},${mouth.width}`);
    const response = await this.request('POST', '/v1/avatars', form, 'upload avatar');
    return response.json();
  }

  /** One HTTP call: JSON or FormData body, bearer token, timeout; non-2xx -> AvatarError. */
  async request(method, path, body, what, extra = {}, token = null) {
    const headers = {};
    const credential = token || this.token;
    if (credential) headers.Authorization = `Bearer ${credential}`;
    let payload;
    if (body instanceof FormData) {
      payload = body;
    } else if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      payload = JSON.stringify(body);
    }
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.timeoutMs);
    let response;
    try {
      response = await this.fetch(this.url(path), { method, headers, body: payload, signal: controller.signal, ...extra });
    } catch (error) {
      const why = controller.signal.aborted ? `no answer within ${this.timeoutMs} ms` : error?.message ?? String(error);
      throw new AvatarError(ErrorCode.SERVER_UNREACHABLE, `${what}: server ${this.base} unreachable (${why})`, { cause: error });
    } finally {
      clearTimeout(timer);
    }
    if (!response.ok) throw await errorFromResponse(response, what);
    return response;
  }
}

/** Server JSON ice server -> RTCIceServer. */
function toRtcIceServer(server) {
  const out = { urls: server.urls };
  if (server.username != null) out.username = server.username;
  if (server.credential != null) out.credential = server.credential;
  return out;
}
