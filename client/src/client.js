// AvatarClient: one live avatar session over WebRTC (non-trickle offer/answer) plus its events socket.

import { backoffDelay, DEFAULT_BACKOFF, sleep } from './backoff.js';
import { AvatarError, ErrorCode, errorFromMedia, toAvatarError } from './errors.js';
import { Signaling } from './signaling.js';

//################################################################################
//                                  Defaults
//################################################################################

/** Timeouts of one connection attempt (ms). */
export const DEFAULT_TIMEOUTS = Object.freeze({
  /** Longest wait for ICE gathering before the offer goes out with what it has. */
  iceGatheringMs: 5000,
  /** Longest wait from the answer to a connected peer connection. */
  connectMs: 15000,
  /** How long a 'disconnected' peer connection may stay so before it counts as lost. */
  disconnectGraceMs: 3000,
  /** Longest wait for the DELETE of a session before its peer connection is closed anyway. */
  deleteMs: 1000,
});

/** Microphone constraints: speech processing on, mono. */
export const DEFAULT_MICROPHONE = Object.freeze({
  echoCancellation: true,
  noiseSuppression: true,
  autoGainControl: true,
  channelCount: 1,
});

const AUDIO_MODES = new Set(['microphone', 'none']);

/** Close codes of the events socket that mean the session (or its token) is gone: a new session is needed. */
const SESSION_GONE_CODES = new Set([4401, 4403, 4404]);

//################################################################################
//                                  Helpers
//################################################################################

/** Resolve when ICE gathering is complete (non-trickle), or after `timeoutMs` with what is there. */
export function waitForIceGathering(pc, timeoutMs) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve(true);
  return new Promise((resolve) => {
    const done = (complete) => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', onChange);
      pc.removeEventListener('icecandidate', onCandidate);
      resolve(complete);
    };
    const onChange = () => pc.iceGatheringState === 'complete' && done(true);
    const onCandidate = (event) => event.candidate == null && done(true);
    const timer = setTimeout(() => done(false), timeoutMs);
    pc.addEventListener('icegatheringstatechange', onChange);
    pc.addEventListener('icecandidate', onCandidate);
  });
}

/** Validate the keypoints of sendPose(): null, or a list of [x, y, visibility] numbers. */
function checkKeypoints(keypoints) {
  if (keypoints === null) return null;
  const ok =
    Array.isArray(keypoints) &&
    keypoints.every((p) => Array.isArray(p) && p.length === 3 && p.every((v) => typeof v === 'number' && Number.isFinite(v)));
  if (!ok) {
    throw new AvatarError(ErrorCode.INVALID_OPTIONS, 'sendPose(): keypoints must be null or [[x, y, visibility], ...] of finite numbers');
  }
  return keypoints;
}

//################################################################################
//                                  AvatarClient
//################################################################################

/**
 * A live avatar session. Events (CustomEvent, payload in `detail`): connected, state, stats, error,
 * reconnecting, closed.
 */
export class AvatarClient extends EventTarget {
  /**
   * @param {{
   *   reconnect?: false | Partial<typeof DEFAULT_BACKOFF>,
   *   timeouts?: Partial<typeof DEFAULT_TIMEOUTS>,
   *   microphone?: MediaTrackConstraints,
   *   fetch?: typeof fetch, RTCPeerConnection?: typeof RTCPeerConnection, WebSocket?: typeof WebSocket,
   *   MediaStream?: typeof MediaStream, mediaDevices?: MediaDevices, random?: () => number,
   * }} [config] environment overrides (tests) and policies
   */
  constructor(config = {}) {
    super();
    this.reconnectPolicy = config.reconnect === false ? null : { ...DEFAULT_BACKOFF, ...(config.reconnect ?? {}) };
    this.timeouts = { ...DEFAULT_TIMEOUTS, ...(config.timeouts ?? {}) };
    this.microphone = { ...DEFAULT_MICROPHONE, ...(config.microphone ?? {}) };
    this.env = {
      fetch: config.fetch ?? globalThis.fetch?.bind(globalThis),
      RTCPeerConnection: config.RTCPeerConnection ?? globalThis.RTCPeerConnection,
      WebSocket: config.WebSocket ?? globalThis.WebSocket,
      MediaStream: config.MediaStream ?? globalThis.MediaStream,
      mediaDevices: config.mediaDevices ?? globalThis.navigator?.mediaDevices,
      random: config.random ?? Math.random,
    };
    /** 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'closed' */
    this.status = 'idle';
    /** Last session state the server reported ('connecting' | 'speaking' | 'silent' | 'idle' | 'closed'). */
    this.state = null;
    /** Last stats the server reported. */
    this.stats = null;
    /** Server id of the current session (changes on reconnect). */
    this.sessionId = null;
    /** The session's own token (auth on): its sockets and its DELETE; dies with the session. */
    this.sessionToken = null;
    /** URL of the session's PCM push socket (TTS/agent audio), token included. */
    this.audioUrl = null;
    /** The avatar's video + synced audio; a new stream after each (re)connect. */
    this.outputStream = null;
    this.videos = new Set();
    this.options = null;
    this.signaling = null;
    this.pc = null;
    this.socket = null;
    this.pending = [];
    this.localStream = null;
    this.ownsLocalStream = false;
    this.lifetime = null;
    this.disconnectTimer = null;
    this.ending = null;
    /** The events socket failed and is being reopened (the session and its media go on). */
    this.eventsDown = false;
    this.eventsAttempt = 0;
    this.eventsGaveUp = null;
    this.eventsTimer = null;
    this.eventsUrl = null;
    this.textUnsent = false;
    this.sessionLoop = false;
  }

  /** Create a client and connect it; resolves with the connected client. */
  static async connect(options, config) {
    const client = new AvatarClient(config);
    await client.connect(options);
    return client;
  }

  /** Subscribe to an event with a handler that gets the payload; returns an unsubscribe function. */
  on(type, handler) {
    const listener = (event) => handler(event.detail);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  //------------------------------------------------------------------ public API

  /**
   * Start a session.
   * @param {{server?: string, token?: string, avatar?: string,
   *          audio?: 'microphone' | 'none' | MediaStream, text?: string,
   *          fps?: number, width?: number, height?: number, guidance?: {audio?: number, text?: number}}} options
   * @returns {Promise<void>} resolves when media flows; rejects with AvatarError (also sent as `error`)
   */
  async connect(options = {}) {
    if (this.status !== 'idle' && this.status !== 'closed') {
      throw new AvatarError(ErrorCode.INVALID_OPTIONS, `connect(): the client is already ${this.status}`);
    }
    this.lifetime = new AbortController();
    this.setStatus('connecting');
    try {
      this.options = this.checkOptions(options);
      this.signaling = new Signaling({ server: this.options.server, token: this.options.token, fetch: this.env.fetch });
      await this.acquireAudio(this.options.audio);
      this.throwIfClosed();
      await this.establish();
      this.throwIfClosed();
      if (this.eventsGaveUp) throw this.eventsGaveUp;
      if (this.eventsDown && !this.reconnectPolicy) {
        throw new AvatarError(ErrorCode.EVENTS_LOST, 'the events socket could not be opened (blocked, or a proxy without WebSocket upgrades?)');
      }
    } catch (thrown) {
      const error = toAvatarError(thrown);
      if (this.status === 'closed') this.release(); // close() came first: free what the attempt still got
      else this.shutdown('error', error);
      throw error;
    }
    this.markConnected();
    this.emit('connected', { sessionId: this.sessionId, outputStream: this.outputStream, reconnected: false });
  }

  /** Show the avatar in a <video> element (now and after every reconnect). */
  attach(video) {
    this.videos.add(video);
    if (this.outputStream) video.srcObject = this.outputStream;
    return video;
  }

  /** Stop updating a <video> element attached earlier. */
  detach(video) {
    this.videos.delete(video);
    if (video.srcObject === this.outputStream) video.srcObject = null;
  }

  /** Barge-in: drop the audio the avatar has not spoken yet. Returns whether it was sent (false while the
   *  events socket is down: status 'reconnecting'). */
  interrupt() {
    return this.send({ type: 'interrupt' });
  }

  /** Change the text condition (kept for reconnects). Returns whether it was sent; unsent text goes out
   *  when the events socket (or a new session) is back. */
  setText(text) {
    if (text != null && typeof text !== 'string') {
      throw new AvatarError(ErrorCode.INVALID_OPTIONS, 'setText(): text must be a string or null');
    }
    if (this.options) this.options.text = text ?? undefined;
    const sent = this.send({ type: 'set_text', text: text ?? null });
    this.textUnsent = !sent && this.status !== 'closed' && this.status !== 'idle';
    return sent;
  }

  /** Drive the body pose: [[x, y, visibility], ...] in image coords [0, 1], or null to release. */
  sendPose(keypoints) {
    return this.send({ type: 'pose', keypoints: checkKeypoints(keypoints) });
  }

  /** End the session and free everything; idempotent. Resolves once the server has been told. */
  close() {
    if (this.status === 'closed' || this.status === 'idle') return this.ending ?? Promise.resolve();
    this.shutdown('client', null);
    return this.ending;
  }

  //------------------------------------------------------------------ connection

  /** Normalise connect() options; throws invalid_options. */
  checkOptions(options) {
    const audio = options.audio ?? 'microphone';
    const isStream = typeof audio === 'object' && audio !== null && typeof audio.getAudioTracks === 'function';
    if (!isStream && !AUDIO_MODES.has(audio)) {
      throw new AvatarError(ErrorCode.INVALID_OPTIONS, `connect(): audio must be 'microphone', 'none' or a MediaStream, got ${JSON.stringify(audio)}`);
    }
    if (!this.env.RTCPeerConnection) {
      throw new AvatarError(ErrorCode.INVALID_OPTIONS, 'connect(): this environment has no RTCPeerConnection');
    }
    return { ...options, audio, avatar: options.avatar || 'default' };
  }

  /** Get the audio to send: the microphone, a given stream, or nothing. */
  async acquireAudio(audio) {
    if (audio === 'none') return;
    if (audio !== 'microphone') {
      this.localStream = audio;
      this.ownsLocalStream = false;
      return;
    }
    const devices = this.env.mediaDevices;
    if (!devices?.getUserMedia) {
      throw new AvatarError(ErrorCode.MICROPHONE_UNAVAILABLE, 'microphone unavailable: no getUserMedia (not a secure context?)');
    }
    try {
      this.localStream = await devices.getUserMedia({ audio: this.microphone, video: false });
      this.ownsLocalStream = true;
    } catch (error) {
      throw errorFromMedia(error);
    }
  }

  /** One full connection attempt: ICE servers, offer, answer, events socket, media flowing. */
  async establish() {
    const iceServers = await this.signaling.iceServers();
    this.throwIfClosed();
    const pc = new this.env.RTCPeerConnection({ iceServers });
    this.pc = pc;
    const video = pc.addTransceiver('video', { direction: 'recvonly' });
    const micTrack = this.localStream?.getAudioTracks()[0];
    const audio = micTrack
      ? pc.addTransceiver(micTrack, { direction: 'sendrecv', streams: [this.localStream] })
      : pc.addTransceiver('audio', { direction: 'recvonly' });
    this.setOutput(new this.env.MediaStream([video.receiver.track, audio.receiver.track]));

    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc, this.timeouts.iceGatheringMs);
    this.throwIfClosed();
    const { sdp, fps, width, height, guidance, text, avatar } = { ...this.options, sdp: pc.localDescription.sdp };
    const body = { sdp, type: 'offer', avatar };
    for (const [key, value] of Object.entries({ text, fps, width, height, guidance })) {
      if (value != null) body[key] = value;
    }
    const answer = await this.signaling.createSession(body);
    if (this.status === 'closed') this.signaling.deleteSession(answer.sessionId, answer.token); // closed while it was created
    this.throwIfClosed();
    this.sessionId = answer.sessionId;
    this.sessionToken = answer.token ?? null; // scoped to this session: its sockets and its DELETE
    this.textUnsent = false; // the latest text went with the offer
    const socketToken = answer.token ?? this.signaling.token;
    this.audioUrl = this.signaling.socketUrl(answer.audioUrl, socketToken);
    this.throwIfClosed();
    await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
    this.openEvents(this.signaling.socketUrl(answer.eventsUrl, socketToken));
    await this.waitConnected(pc);
    pc.addEventListener('connectionstatechange', () => this.watchConnection(pc));
  }

  /** Resolve when the peer connection is connected; connection_failed on failure or timeout. */
  waitConnected(pc) {
    return new Promise((resolve, reject) => {
      const finish = (error) => {
        clearTimeout(timer);
        pc.removeEventListener('connectionstatechange', onChange);
        this.lifetime.signal.removeEventListener('abort', onAbort);
        error ? reject(error) : resolve();
      };
      const onChange = () => {
        if (pc.connectionState === 'connected') finish(null);
        else if (pc.connectionState === 'failed' || pc.connectionState === 'closed') {
          finish(new AvatarError(ErrorCode.CONNECTION_FAILED, `WebRTC connection ${pc.connectionState} (ICE/DTLS could not reach the server's media)`));
        }
      };
      const onAbort = () => finish(new AvatarError(ErrorCode.CONNECTION_FAILED, 'closed while connecting'));
      const timer = setTimeout(
        () => finish(new AvatarError(ErrorCode.CONNECTION_FAILED, `WebRTC connection not up after ${this.timeouts.connectMs} ms (firewall or NAT without TURN?)`)),
        this.timeouts.connectMs,
      );
      pc.addEventListener('connectionstatechange', onChange);
      this.lifetime.signal.addEventListener('abort', onAbort, { once: true });
      onChange();
    });
  }

  /** After connect: 'failed' is a loss at once; 'disconnected' is a loss after the grace period. */
  watchConnection(pc) {
    if (pc !== this.pc || !this.live()) return;
    clearTimeout(this.disconnectTimer);
    if (pc.connectionState === 'failed') this.lost('WebRTC connection failed');
    else if (pc.connectionState === 'disconnected') {
      this.disconnectTimer = setTimeout(() => this.lost('WebRTC connection lost'), this.timeouts.disconnectGraceMs);
    }
  }

  /** Open the events socket of the session and route its messages. */
  openEvents(url) {
    clearTimeout(this.eventsTimer);
    this.eventsUrl = url;
    const socket = new this.env.WebSocket(url);
    this.socket = socket;
    this.pending = [];
    socket.addEventListener('open', () => socket === this.socket && this.eventsOpened(socket));
    socket.addEventListener('message', (event) => this.onMessage(event.data));
    socket.addEventListener('close', (event) => socket === this.socket && this.eventsClosed(event));
  }

  /** The events socket is open: flush what waited, and end an outage (status back to 'connected'). */
  eventsOpened(socket) {
    for (const message of this.pending.splice(0)) socket.send(message);
    this.eventsAttempt = 0;
    if (!this.eventsDown) return;
    this.eventsDown = false;
    if (this.status === 'reconnecting' && !this.sessionLoop) this.setStatus('connected');
    if (this.textUnsent) this.setText(this.options?.text ?? null);
    if (this.status === 'connected') {
      this.emit('connected', { sessionId: this.sessionId, outputStream: this.outputStream, reconnected: true, channel: 'events' });
    }
  }

  /**
   * The events socket closed without us: a gone session (4401/4403/4404) needs a new one; any other
   * failure (blocked, refused, a proxy without upgrades, network) is reported and the socket reopened
   * with backoff while the media goes on.
   */
  eventsClosed(event) {
    const code = event?.code ?? 1006;
    if (this.status === 'closed' || this.status === 'idle') return;
    if (SESSION_GONE_CODES.has(code) && this.live()) {
      this.lost(`events channel closed (${code})`);
      return;
    }
    const error = new AvatarError(ErrorCode.EVENTS_LOST, `events channel closed (code ${code}); reopening it`, { fatal: false, detail: event?.reason || null });
    if (!this.eventsDown) {
      this.eventsDown = true;
      if (this.status === 'connected') this.setStatus('reconnecting');
      this.emit('error', error.toJSON());
    }
    this.retryEvents(error);
  }

  /** Reopen the events socket after a backoff delay; give up (closed, reconnect_failed) after maxAttempts. */
  retryEvents(error) {
    const policy = this.reconnectPolicy;
    if (!policy) {
      if (this.status !== 'connecting') this.shutdown('error', new AvatarError(ErrorCode.EVENTS_LOST, error.message.replace('; reopening it', '')));
      return;
    }
    if (this.eventsAttempt >= policy.maxAttempts) {
      const gaveUp = new AvatarError(ErrorCode.RECONNECT_FAILED, `could not reopen the events channel: ${error.message}`, { cause: error });
      if (this.status === 'connecting') this.eventsGaveUp = gaveUp;
      else this.shutdown('error', gaveUp);
      return;
    }
    const delayMs = backoffDelay(this.eventsAttempt, policy, this.env.random);
    this.eventsAttempt += 1;
    this.emit('reconnecting', { attempt: this.eventsAttempt, delayMs, error: error.toJSON(), channel: 'events' });
    const url = this.eventsUrl;
    this.eventsTimer = setTimeout(() => this.eventsDown && this.live(true) && this.openEvents(url), delayMs);
  }

  /** A session is up (media may flow): connected, or reconnecting only its events socket; `connecting` counts
   *  when `orConnecting`. */
  live(orConnecting = false) {
    if (this.status === 'connected') return true;
    if (orConnecting && (this.status === 'connecting' || this.sessionLoop)) return true;
    return this.status === 'reconnecting' && !this.sessionLoop;
  }

  /** 'connected' when the events socket works, else 'reconnecting' (its reopening is under way). */
  markConnected() {
    this.setStatus(this.eventsDown ? 'reconnecting' : 'connected');
  }

  /** Dispatch one server event. */
  onMessage(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    if (message.type === 'state') {
      this.state = message.state;
      this.emit('state', { state: message.state });
      if (message.state === 'closed' && this.status === 'connected') {
        this.sessionId = null; // already gone on the server: nothing to DELETE
        this.shutdown('server', null);
      }
    } else if (message.type === 'stats') {
      const { type, ...stats } = message;
      this.stats = stats;
      this.emit('stats', stats);
    } else if (message.type === 'error') {
      const error = new AvatarError(ErrorCode.SESSION_ERROR, message.detail || message.code || 'session error', {
        serverCode: message.code ?? null,
        detail: message.detail ?? null,
        fatal: false,
      });
      this.emit('error', error.toJSON());
    }
  }

  /** Send a control message on the events socket (queued until it first opens); false while it is down. */
  send(message) {
    const socket = this.socket;
    if (!socket || this.eventsDown || (this.status !== 'connected' && this.status !== 'connecting')) return false;
    const text = JSON.stringify(message);
    if (socket.readyState === 1) socket.send(text);
    else if (socket.readyState === 0) this.pending.push(text);
    else return false;
    return true;
  }

  //------------------------------------------------------------------ reconnect

  /** An established session dropped: reconnect with backoff (or close when reconnect is off). */
  async lost(reason) {
    if (!this.live()) return;
    const lostError = new AvatarError(ErrorCode.CONNECTION_LOST, `${reason}; reconnecting`, { fatal: false });
    if (!this.reconnectPolicy) {
      this.shutdown('error', new AvatarError(ErrorCode.CONNECTION_LOST, reason));
      return;
    }
    this.setStatus('reconnecting');
    this.emit('error', lostError.toJSON());
    this.dropConnection();
    this.sessionLoop = true;
    try {
      await this.reconnectSession(lostError);
    } finally {
      this.sessionLoop = false;
    }
  }

  /** The attempts of a session reconnect: a new session each, with backoff; closes when all fail. */
  async reconnectSession(lostError) {
    let last = lostError;
    for (let attempt = 0; attempt < this.reconnectPolicy.maxAttempts; attempt += 1) {
      let delayMs = backoffDelay(attempt, this.reconnectPolicy, this.env.random);
      if (last.code === ErrorCode.SERVER_BUSY && last.retryAfter != null) delayMs = Math.max(delayMs, last.retryAfter * 1000);
      this.emit('reconnecting', { attempt: attempt + 1, delayMs, error: last.toJSON() });
      if (!(await sleep(delayMs, this.lifetime.signal))) return;
      try {
        await this.establish();
        this.markConnected();
        this.emit('connected', { sessionId: this.sessionId, outputStream: this.outputStream, reconnected: true });
        return;
      } catch (thrown) {
        this.dropConnection();
        if (this.status !== 'reconnecting') return;
        last = toAvatarError(thrown);
        if (last.stopsReconnect) break;
      }
    }
    const gaveUp = new AvatarError(ErrorCode.RECONNECT_FAILED, `could not reconnect: ${last.message}`, {
      status: last.status,
      retryAfter: last.retryAfter,
      detail: last.detail,
      cause: last,
    });
    this.shutdown('error', gaveUp);
  }

  //------------------------------------------------------------------ teardown

  /**
   * End the current attempt: DELETE its server session first, then close the peer connection once
   * the server has answered (or after a second), so the server never sees the peer vanish first.
   */
  dropConnection() {
    clearTimeout(this.disconnectTimer);
    clearTimeout(this.eventsTimer);
    this.eventsDown = false;
    this.eventsAttempt = 0;
    this.eventsGaveUp = null;
    const { pc, socket, sessionId, sessionToken, signaling } = this;
    this.pc = null;
    this.socket = null;
    this.sessionId = null;
    this.sessionToken = null;
    this.audioUrl = null;
    if (socket && socket.readyState <= 1) socket.close(1000, 'client closed');
    if (!pc) return Promise.resolve();
    if (!sessionId || !signaling) {
      pc.close();
      return Promise.resolve();
    }
    const closePc = () => pc.connectionState !== 'closed' && pc.close();
    const timer = setTimeout(closePc, this.timeouts.deleteMs);
    return signaling.deleteSession(sessionId, sessionToken).finally(() => {
      clearTimeout(timer);
      closePc();
    });
  }

  /** Final teardown: media, connection, listeners; emits error (when given) then closed. */
  shutdown(reason, error) {
    if (this.status === 'closed') return;
    this.setStatus('closed');
    this.lifetime?.abort();
    /** Settles when the server has been told (DELETE answered or failed). */
    this.ending = this.release();
    if (error) this.emit('error', error.toJSON());
    this.emit('closed', { reason, error: error ? error.toJSON() : null });
  }

  /** Drop the connection and stop the microphone this client opened; resolves when the server knows. */
  release() {
    const dropped = this.dropConnection();
    if (this.ownsLocalStream) this.localStream?.getTracks().forEach((track) => track.stop());
    this.localStream = null;
    this.ownsLocalStream = false;
    return dropped.then(() => undefined);
  }

  //------------------------------------------------------------------ internals

  throwIfClosed() {
    if (this.status === 'closed') throw new AvatarError(ErrorCode.CONNECTION_FAILED, 'closed while connecting');
  }

  setStatus(status) {
    this.status = status;
  }

  setOutput(stream) {
    this.outputStream = stream;
    for (const video of this.videos) video.srcObject = stream;
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
