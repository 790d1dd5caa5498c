// Fakes of the browser APIs AvatarClient uses: RTCPeerConnection, WebSocket, MediaStream, getUserMedia, fetch.

/** Let queued timers and microtasks run. */
import { AvatarClient } from '../src/client.js';

export const SERVER = 'http://avatars.example.test:8000';

export const tick = (ms = 0) => new Promise((resolve) => setTimeout(resolve, ms));

/** Wait until `predicate()` holds (polling), or fail after `timeoutMs`. */
export async function until(predicate, timeoutMs = 2000) {
  const start = Date.now();
  while (!predicate()) {
    if (Date.now() - start > timeoutMs) throw new Error(`condition not met in ${timeoutMs} ms: ${predicate}`);
    await tick(2);
  }
}

//################################################################################
//                                  Media
//################################################################################

export class FakeTrack {
  constructor(kind) {
    this.kind = kind;
    this.readyState = 'live';
  }

  stop() {
    this.readyState = 'ended';
  }
}

export class FakeMediaStream {
  constructor(tracks = []) {
    this.tracks = [...tracks];
  }

  getTracks() {
    return [...this.tracks];
  }

  getAudioTracks() {
    return this.tracks.filter((t) => t.kind === 'audio');
  }

  getVideoTracks() {
    return this.tracks.filter((t) => t.kind === 'video');
  }
}

/** navigator.mediaDevices with a getUserMedia that grants a fake mic or rejects with `deny`. */
export function fakeMediaDevices({ deny = null } = {}) {
  const devices = {
    calls: [],
    async getUserMedia(constraints) {
      devices.calls.push(constraints);
      if (deny) {
        const error = new Error(`${deny} by the fake`);
        error.name = deny;
        throw error;
      }
      return new FakeMediaStream([new FakeTrack('audio')]);
    },
  };
  return devices;
}

//################################################################################
//                                  RTCPeerConnection
//################################################################################

/** Peer connection fake: gathers ICE asynchronously, connects after the answer (unless told not to). */
export class FakePeerConnection extends EventTarget {
  static instances = [];
  /** Behaviour of the next instances: connect after the answer, gather ICE at all. */
  static behaviour = { connect: true, gather: true };

  constructor(config) {
    super();
    this.config = config;
    this.transceivers = [];
    this.connectionState = 'new';
    this.iceGatheringState = 'new';
    this.localDescription = null;
    this.remoteDescription = null;
    FakePeerConnection.instances.push(this);
  }

  addTransceiver(trackOrKind, init = {}) {
    const kind = typeof trackOrKind === 'string' ? trackOrKind : trackOrKind.kind;
    const transceiver = {
      kind,
      direction: init.direction,
      sender: { track: typeof trackOrKind === 'string' ? null : trackOrKind },
      receiver: { track: new FakeTrack(kind) },
    };
    this.transceivers.push(transceiver);
    return transceiver;
  }

  async createOffer() {
    return { type: 'offer', sdp: `v=0\r\nm=video\r\nm=audio\r\n` };
  }

  async setLocalDescription(description) {
    this.localDescription = { ...description };
    this.iceGatheringState = 'gathering';
    if (!FakePeerConnection.behaviour.gather) return;
    setTimeout(() => {
      this.localDescription.sdp += 'a=candidate:1 1 udp 1 192.0.2.2 5000 typ host\r\n';
      this.iceGatheringState = 'complete';
      this.dispatchEvent(new Event('icegatheringstatechange'));
    }, 5);
  }

  async setRemoteDescription(description) {
    this.remoteDescription = description;
    if (!FakePeerConnection.behaviour.connect) return;
    setTimeout(() => this.setConnectionState('connected'), 5);
  }

  setConnectionState(state) {
    if (this.connectionState === 'closed') return;
    this.connectionState = state;
    this.dispatchEvent(new Event('connectionstatechange'));
  }

  close() {
    this.connectionState = 'closed';
  }
}

//################################################################################
//                                  WebSocket
//################################################################################

export class FakeWebSocket extends EventTarget {
  static instances = [];
  /** How many of the next sockets fail to open (blocked / refused: error, then close 1006). */
  static behaviour = { fail: 0 };

  constructor(url) {
    super();
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeWebSocket.instances.push(this);
    const fails = FakeWebSocket.behaviour.fail > 0;
    if (fails) FakeWebSocket.behaviour.fail -= 1;
    setTimeout(() => {
      if (this.readyState !== 0) return;
      if (fails) {
        this.dispatchEvent(new Event('error'));
        this.serverClose(1006);
        return;
      }
      this.readyState = 1;
      this.dispatchEvent(new Event('open'));
    }, 1);
  }

  send(text) {
    this.sent.push(JSON.parse(text));
  }

  close() {
    this.readyState = 3;
  }

  /** The server sends a JSON event. */
  serverSend(message) {
    const event = new Event('message');
    event.data = JSON.stringify(message);
    this.dispatchEvent(event);
  }

  /** The connection drops from the server side (`code` as a CloseEvent carries it; none: like a bare drop). */
  serverClose(code) {
    this.readyState = 3;
    const event = new Event('close');
    if (code !== undefined) event.code = code;
    this.dispatchEvent(event);
  }
}

//################################################################################
//                                  fetch
//################################################################################

const json = (status, body, headers = {}) =>
  new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json', ...headers } });

/**
 * A fake server: routes "METHOD /path" to handlers; records every call.
 * Sessions get ids s1, s2, ... Override a route with `server.routes['POST /v1/sessions'] = () => ...`.
 */
export function fakeServer() {
  let sessions = 0;
  const server = {
    calls: [],
    routes: {
      'GET /v1/ice-servers': () => json(200, { ice_servers: [{ urls: ['stun:stun.example.test:3478'] }] }),
      'POST /v1/sessions': () => {
        sessions += 1;
        const id = `s${sessions}`;
        return json(
          201,
          { session_id: id, sdp: `answer-${id}`, type: 'answer', ice_servers: [], events_url: `/v1/sessions/${id}/events`, audio_url: `/v1/sessions/${id}/audio` },
          { location: `/v1/sessions/${id}` },
        );
      },
    },
    fetch: async (url, init = {}) => {
      const { pathname } = new URL(url);
      const method = init.method ?? 'GET';
      server.calls.push({ method, path: pathname, url, headers: init.headers ?? {}, body: typeof init.body === 'string' ? JSON.parse(init.body) : init.body, init });
      if (method === 'DELETE') return new Response(null, { status: 204 });
      const handler = server.routes[`${method} ${pathname}`];
      if (!handler) return json(404, { type: 'about:blank', title: 'Not Found', status: 404, detail: `no route ${pathname}` });
      return handler(init);
    },
    /** Calls with this method and path. */
    find(method, path) {
      return server.calls.filter((c) => c.method === method && (path === undefined || c.path === path));
    },
  };
  return server;
}

/** A 503/401/... problem response. */
export function problem(status, detail, headers = {}) {
  return () =>
    new Response(JSON.stringify({ type: 'about:blank', title: 'error', status, detail }), {
      status,
      headers: { 'content-type': 'application/problem+json', ...headers },
    });
}

/** A fresh environment for one AvatarClient. */
export function fakeEnvironment({ deny = null } = {}) {
  FakePeerConnection.instances = [];
  FakePeerConnection.behaviour = { connect: true, gather: true };
  FakeWebSocket.instances = [];
  FakeWebSocket.behaviour = { fail: 0 };
  const server = fakeServer();
  const mediaDevices = fakeMediaDevices({ deny });
  return {
    server,
    mediaDevices,
    config: {
      fetch: server.fetch,
      RTCPeerConnection: FakePeerConnection,
      WebSocket: FakeWebSocket,
      MediaStream: FakeMediaStream,
      mediaDevices,
      random: () => 0.5,
      reconnect: { initialDelayMs: 1, maxDelayMs: 5, maxAttempts: 3 },
      timeouts: { iceGatheringMs: 200, connectMs: 300, disconnectGraceMs: 30 },
    },
  };
}

/** Record every event of a client as [type, detail]. */
export function recordEvents(target, types = ['connected', 'state', 'stats', 'error', 'reconnecting', 'closed']) {
  const events = [];
  for (const type of types) target.addEventListener(type, (event) => events.push([type, event.detail]));
  return events;
}

/** A client connected to the fake server (audio 'none' unless given), with its events, peer and socket. */
export async function connectedClient(env, options = {}) {
  const client = new AvatarClient(env.config);
  const events = recordEvents(client);
  await client.connect({ server: SERVER, audio: 'none', ...options });
  return { client, events, pc: FakePeerConnection.instances.at(-1), socket: FakeWebSocket.instances.at(-1) };
}
