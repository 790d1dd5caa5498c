// Types of @omnilive/client (ES modules in src/, no build step).

//################################################################################
//                                  Errors
//################################################################################

export declare const ErrorCode: {
  readonly MICROPHONE_DENIED: 'microphone_denied';
  readonly MICROPHONE_UNAVAILABLE: 'microphone_unavailable';
  readonly SERVER_UNREACHABLE: 'server_unreachable';
  readonly SERVER_BUSY: 'server_busy';
  readonly UNAUTHORIZED: 'unauthorized';
  readonly NOT_FOUND: 'not_found';
  readonly REQUEST_REJECTED: 'request_rejected';
  readonly SERVER_ERROR: 'server_error';
  readonly CONNECTION_FAILED: 'connection_failed';
  readonly CONNECTION_LOST: 'connection_lost';
  readonly EVENTS_LOST: 'events_lost';
  readonly RECONNECT_FAILED: 'reconnect_failed';
  readonly SESSION_ERROR: 'session_error';
  readonly INVALID_OPTIONS: 'invalid_options';
};
export type ErrorCodeValue = (typeof ErrorCode)[keyof typeof ErrorCode];

/** Payload of an `error` event (and AvatarError.toJSON()). */
export interface AvatarErrorInfo {
  code: ErrorCodeValue;
  message: string;
  /** HTTP status when the error came from an HTTP answer. */
  status: number | null;
  /** Seconds to wait before retrying (server_busy, from Retry-After). */
  retryAfter: number | null;
  /** The server's problem `detail` (or event detail). */
  detail: string | null;
  /** The server's own code for session_error. */
  serverCode: string | null;
  /** false for errors the session survives (connection_lost, events_lost, session_error). */
  fatal: boolean;
}

export declare class AvatarError extends Error {
  constructor(code: ErrorCodeValue, message: string, info?: Partial<Omit<AvatarErrorInfo, 'code' | 'message'>> & { cause?: unknown });
  readonly code: ErrorCodeValue;
  readonly status: number | null;
  readonly retryAfter: number | null;
  readonly detail: string | null;
  readonly serverCode: string | null;
  readonly fatal: boolean;
  readonly stopsReconnect: boolean;
  toJSON(): AvatarErrorInfo;
}

export declare function parseRetryAfter(value: string | null | undefined, now?: number): number | null;
export declare function errorFromResponse(response: Response, what: string): Promise<AvatarError>;
export declare function errorFromMedia(error: unknown): AvatarError;

//################################################################################
//                                  AvatarClient
//################################################################################

export type SessionState = 'connecting' | 'speaking' | 'silent' | 'idle' | 'closed';
export type ClientStatus = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'closed';

export interface ConnectOptions {
  /** Server base URL; defaults to the page's origin. */
  server?: string;
  /** API key or short-lived session token (POST /v1/tokens); omit for an open server. */
  token?: string;
  /** Avatar id (GET /v1/avatars); defaults to 'default'. */
  avatar?: string;
  /** What to send: the microphone (default), a MediaStream's audio track, or nothing (TTS via audioUrl). */
  audio?: 'microphone' | 'none' | MediaStream;
  /** Text condition (scene, behaviour). */
  text?: string;
  fps?: number;
  width?: number;
  height?: number;
  guidance?: { audio?: number; text?: number };
}

export interface StatsEvent {
  fps: number;
  target_fps: number;
  latency_ms_p50: number;
  latency_ms_p95: number;
  dropped_frames: number;
  held_frames: number;
  [key: string]: unknown;
}

export interface ConnectedEvent {
  sessionId: string;
  outputStream: MediaStream;
  reconnected: boolean;
  /** 'events' when only the events socket was reopened (same session, same outputStream). */
  channel?: 'events';
}

export interface ReconnectingEvent {
  /** 1-based attempt number. */
  attempt: number;
  /** Wait before this attempt (backoff, at least Retry-After after a 503). */
  delayMs: number;
  /** Why the previous attempt (or the session) failed. */
  error: AvatarErrorInfo;
  /** 'events' for an attempt to reopen only the events socket (the session goes on). */
  channel?: 'events';
}

export interface ClosedEvent {
  /** 'client': close(); 'server': the server ended the session; 'error': a fatal error (see `error`). */
  reason: 'client' | 'server' | 'error';
  error: AvatarErrorInfo | null;
}

export interface AvatarClientEventMap {
  connected: CustomEvent<ConnectedEvent>;
  state: CustomEvent<{ state: SessionState }>;
  stats: CustomEvent<StatsEvent>;
  error: CustomEvent<AvatarErrorInfo>;
  reconnecting: CustomEvent<ReconnectingEvent>;
  closed: CustomEvent<ClosedEvent>;
}

export interface BackoffPolicy {
  initialDelayMs: number;
  maxDelayMs: number;
  factor: number;
  jitter: number;
  maxAttempts: number;
}

export interface Timeouts {
  iceGatheringMs: number;
  connectMs: number;
  disconnectGraceMs: number;
  deleteMs: number;
}

export interface AvatarClientConfig {
  /** Reconnect policy after network loss; false disables reconnecting. */
  reconnect?: false | Partial<BackoffPolicy>;
  timeouts?: Partial<Timeouts>;
  /** getUserMedia audio constraints (defaults: echo cancellation, noise suppression, AGC, mono). */
  microphone?: MediaTrackConstraints;
  // Environment overrides (tests, non-browser runtimes).
  fetch?: typeof fetch;
  RTCPeerConnection?: typeof RTCPeerConnection;
  WebSocket?: typeof WebSocket;
  MediaStream?: typeof MediaStream;
  mediaDevices?: Pick<MediaDevices, 'getUserMedia'>;
  random?: () => number;
}

export declare const DEFAULT_BACKOFF: Readonly<BackoffPolicy>;
export declare const DEFAULT_TIMEOUTS: Readonly<Timeouts>;
export declare const DEFAULT_MICROPHONE: Readonly<MediaTrackConstraints>;
export declare function backoffDelay(attempt: number, policy?: Partial<BackoffPolicy>, random?: () => number): number;
export declare function waitForIceGathering(pc: RTCPeerConnection, timeoutMs: number): Promise<boolean>;

export declare class AvatarClient extends EventTarget {
  constructor(config?: AvatarClientConfig);
  /** Create and connect a client. */
  static connect(options: ConnectOptions, config?: AvatarClientConfig): Promise<AvatarClient>;

  readonly status: ClientStatus;
  /** Last state the server reported. */
  readonly state: SessionState | null;
  readonly stats: StatsEvent | null;
  readonly sessionId: string | null;
  /** The session's own token when the server requires auth: its sockets and its DELETE, dies with the session. */
  readonly sessionToken: string | null;
  /** ws(s) URL of the session's PCM16 push socket (token included), for TTS / agent audio. */
  readonly audioUrl: string | null;
  /** Avatar video + synced audio (one track each); a new stream after every (re)connect. */
  readonly outputStream: MediaStream | null;

  /** Resolves once media flows; rejects with AvatarError (also emitted as `error`, then `closed`). */
  connect(options?: ConnectOptions): Promise<void>;
  attach(video: HTMLVideoElement): HTMLVideoElement;
  detach(video: HTMLVideoElement): void;
  interrupt(): boolean;
  setText(text: string | null): boolean;
  /** [[x, y, visibility], ...] in image coordinates [0, 1]; null releases the pose. */
  sendPose(keypoints: Array<[number, number, number]> | null): boolean;
  /** Idempotent; resolves once the server has been told (DELETE answered or failed). */
  close(): Promise<void>;

  /** Subscribe with a handler that receives the event's detail; returns an unsubscribe function. */
  on<K extends keyof AvatarClientEventMap>(type: K, handler: (detail: AvatarClientEventMap[K]['detail']) => void): () => void;
  addEventListener<K extends keyof AvatarClientEventMap>(
    type: K,
    listener: (event: AvatarClientEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
}

//################################################################################
//                                  Signaling
//################################################################################

export interface AvatarInfo {
  id: string;
  name?: string;
  [key: string]: unknown;
}

export declare function resolveServer(server?: string): string;

export declare class Signaling {
  constructor(options: { server?: string; token?: string | null; fetch?: typeof fetch; timeoutMs?: number });
  readonly base: string;
  url(path: string): string;
  socketUrl(path: string, token?: string | null): string;
  iceServers(): Promise<RTCIceServer[]>;
  createSession(body: Record<string, unknown>): Promise<{
    sessionId: string;
    sdp: string;
    iceServers: RTCIceServer[];
    eventsUrl: string;
    audioUrl: string;
    location: string;
    token: string | null;
  }>;
  /** `token`: the session's own token (a client token cannot end a session). */
  deleteSession(sessionId: string, token?: string | null): Promise<boolean>;
  listAvatars(): Promise<AvatarInfo[]>;
  /** `mouth`: the closed mouth (lip-line centre, corner-to-corner width; fractions of the image) when the server's locator misreads it. */
  uploadAvatar(image: Blob, name?: string, mouth?: { x: number; y: number; width: number }): Promise<AvatarInfo>;
}

//################################################################################
//                                  Chroma key
//################################################################################

export interface KeyParams {
  similarity: number;
  smoothness: number;
  lumaWeight: number;
  border: number;
  sampleWidth: number;
  refreshFrames: number;
}
export type RGB = [number, number, number];

export declare const DEFAULT_KEY: Readonly<KeyParams>;
export declare function parseColor(text: string, ctx?: CanvasRenderingContext2D): RGB | null;
export declare function toYCbCr(r: number, g: number, b: number): RGB;
export declare function keyAlpha(r: number, g: number, b: number, keyYcc: RGB, params?: KeyParams): number;
export declare function estimateKeyColor(data: ArrayLike<number>, width: number, height: number, border?: number): RGB;
export declare function applyChromaKey<T extends Uint8ClampedArray | Uint8Array>(data: T, keyRgb: RGB, background?: RGB | null, params?: KeyParams): T;

export declare class ChromaKeyer {
  constructor(canvas: HTMLCanvasElement, options?: { renderer?: 'auto' | 'webgl' | 'canvas'; document?: Document });
  readonly kind: 'webgl' | 'canvas';
  draw(video: HTMLVideoElement, options?: { key?: RGB | null; background?: RGB | null; params?: KeyParams }): boolean;
  destroy(): void;
}

//################################################################################
//                                  <omnilive-avatar>
//################################################################################

export declare const FORWARDED_EVENTS: ReadonlyArray<keyof AvatarClientEventMap>;

export interface OmniliveAvatarEventMap extends Omit<HTMLElementEventMap, keyof AvatarClientEventMap>, AvatarClientEventMap {
  'autoplay-blocked': CustomEvent<undefined>;
}

/**
 * <omnilive-avatar server avatar token audio text background key-color key-tolerance renderer muted manual>
 * background: 'none' (as generated) | 'transparent' | a CSS colour; chroma-keyed against key-color or,
 * without it, the colour of the frame's border.
 */
export declare class OmniliveAvatarElement extends HTMLElement {
  readonly video: HTMLVideoElement;
  readonly canvas: HTMLCanvasElement;
  readonly client: AvatarClient | null;
  readonly outputStream: MediaStream | null;
  /** 'webgl' | 'canvas' while keying, else null. */
  readonly renderer: 'webgl' | 'canvas' | null;
  start(): Promise<void>;
  /** Resolves once the server has been told. */
  stop(): Promise<void>;
  interrupt(): boolean;
  setText(text: string | null): boolean;
  sendPose(keypoints: Array<[number, number, number]> | null): boolean;
  addEventListener<K extends keyof OmniliveAvatarEventMap>(
    type: K,
    listener: (this: OmniliveAvatarElement, event: OmniliveAvatarEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
}

declare global {
  interface HTMLElementTagNameMap {
    'omnilive-avatar': OmniliveAvatarElement;
  }
}
