// Errors of the omnilive client: one class, a closed set of codes, mapping from HTTP and media failures.

//################################################################################
//                                  Codes
//################################################################################

/** Every code an `error` event (or a rejected `connect()`) can carry. */
export const ErrorCode = Object.freeze({
  /** The user or a permission policy refused the microphone (NotAllowedError / SecurityError). */
  MICROPHONE_DENIED: 'microphone_denied',
  /** No microphone, or it is in use / unreadable, or the page is not a secure context. */
  MICROPHONE_UNAVAILABLE: 'microphone_unavailable',
  /** The server could not be reached (network down, DNS, refused, CORS, timeout). */
  SERVER_UNREACHABLE: 'server_unreachable',
  /** HTTP 503 (the server is full) or 429 (sessions are being created too fast): retry later. `retryAfter`
   *  holds the seconds to wait (null when not sent). */
  SERVER_BUSY: 'server_busy',
  /** HTTP 401 / 403: the token is missing, wrong or expired. */
  UNAUTHORIZED: 'unauthorized',
  /** HTTP 404: the avatar (or session) does not exist. */
  NOT_FOUND: 'not_found',
  /** Any other HTTP 4xx: the server rejected the request (`detail` says why). */
  REQUEST_REJECTED: 'request_rejected',
  /** HTTP 5xx other than 503. */
  SERVER_ERROR: 'server_error',
  /** The WebRTC connection did not come up (ICE / DTLS failed or timed out). */
  CONNECTION_FAILED: 'connection_failed',
  /** An established session lost its connection; the client is reconnecting (not fatal). */
  CONNECTION_LOST: 'connection_lost',
  /** The events socket failed or was blocked (close code in the message); it is reopened with backoff while
   *  the media goes on (not fatal), and interrupt()/setText()/sendPose() return false meanwhile. */
  EVENTS_LOST: 'events_lost',
  /** Every reconnect attempt failed; the client is closed. */
  RECONNECT_FAILED: 'reconnect_failed',
  /** The server reported an error on the events channel (`serverCode` holds its code). */
  SESSION_ERROR: 'session_error',
  /** connect() was called with bad options, or a method was called in the wrong state. */
  INVALID_OPTIONS: 'invalid_options',
});

const FATAL_ON_RECONNECT = new Set([
  ErrorCode.UNAUTHORIZED,
  ErrorCode.NOT_FOUND,
  ErrorCode.REQUEST_REJECTED,
  ErrorCode.MICROPHONE_DENIED,
  ErrorCode.MICROPHONE_UNAVAILABLE,
  ErrorCode.INVALID_OPTIONS,
]);

//################################################################################
//                                  AvatarError
//################################################################################

/** An Error with a stable `code` and the facts a UI needs to explain it. */
export class AvatarError extends Error {
  /**
   * @param {string} code one of ErrorCode
   * @param {string} message human-readable explanation
   * @param {{status?: number, retryAfter?: number|null, detail?: string, serverCode?: string,
   *          fatal?: boolean, cause?: unknown}} [info]
   */
  constructor(code, message, info = {}) {
    super(message, info.cause === undefined ? undefined : { cause: info.cause });
    this.name = 'AvatarError';
    this.code = code;
    this.status = info.status ?? null;
    this.retryAfter = info.retryAfter ?? null;
    this.detail = info.detail ?? null;
    this.serverCode = info.serverCode ?? null;
    this.fatal = info.fatal ?? true;
  }

  /** Whether a reconnect loop should give up when it meets this error. */
  get stopsReconnect() {
    return FATAL_ON_RECONNECT.has(this.code);
  }

  /** The plain object sent as the `detail` of an `error` event. */
  toJSON() {
    return {
      code: this.code,
      message: this.message,
      status: this.status,
      retryAfter: this.retryAfter,
      detail: this.detail,
      serverCode: this.serverCode,
      fatal: this.fatal,
    };
  }
}

//################################################################################
//                                  Mapping
//################################################################################

/**
 * Parse a Retry-After header: delta seconds or an HTTP date; null when absent or unreadable.
 * @param {string|null|undefined} value
 * @param {number} [now] ms since the epoch
 */
export function parseRetryAfter(value, now = Date.now()) {
  if (value == null || value === '') return null;
  const text = String(value).trim();
  if (/^\d+$/.test(text)) return Number(text);
  const when = Date.parse(text);
  if (Number.isNaN(when)) return null;
  return Math.max(0, Math.ceil((when - now) / 1000));
}

/** Read a problem+json (or plain text) body without throwing. */
async function readProblem(response) {
  let text = '';
  try {
    text = await response.text();
  } catch {
    return {};
  }
  try {
    const body = JSON.parse(text);
    return body && typeof body === 'object' ? body : {};
  } catch {
    return text ? { detail: text.slice(0, 500) } : {};
  }
}

/**
 * Turn a non-2xx fetch Response into an AvatarError.
 * @param {Response} response
 * @param {string} what the request, for the message ("create session")
 */
export async function errorFromResponse(response, what) {
  const problem = await readProblem(response);
  const status = response.status;
  const detail = problem.detail ?? problem.title ?? null;
  const suffix = detail ? `: ${detail}` : '';
  if (status === 401 || status === 403) {
    return new AvatarError(ErrorCode.UNAUTHORIZED, `${what} refused (HTTP ${status}): bad or expired token${suffix}`, { status, detail });
  }
  if (status === 503 || status === 429) {
    const retryAfter = parseRetryAfter(response.headers?.get?.('retry-after'));
    const wait = retryAfter == null ? '' : `; retry in ${retryAfter} s`;
    return new AvatarError(ErrorCode.SERVER_BUSY, `server busy (HTTP ${status})${wait}${suffix}`, { status, detail, retryAfter });
  }
  if (status === 404) {
    return new AvatarError(ErrorCode.NOT_FOUND, `${what}: not found (HTTP 404)${suffix}`, { status, detail });
  }
  if (status >= 400 && status < 500) {
    return new AvatarError(ErrorCode.REQUEST_REJECTED, `${what} rejected (HTTP ${status})${suffix}`, { status, detail });
  }
  return new AvatarError(ErrorCode.SERVER_ERROR, `${what} failed (HTTP ${status})${suffix}`, { status, detail });
}

/** Map a getUserMedia rejection to an AvatarError. */
export function errorFromMedia(error) {
  const name = error?.name ?? '';
  if (name === 'NotAllowedError' || name === 'SecurityError' || name === 'PermissionDeniedError') {
    return new AvatarError(ErrorCode.MICROPHONE_DENIED, 'microphone access was denied', { cause: error, detail: error?.message ?? null });
  }
  return new AvatarError(ErrorCode.MICROPHONE_UNAVAILABLE, `microphone unavailable (${name || 'unknown error'})`, {
    cause: error,
    detail: error?.message ?? null,
  });
}

/** Coerce anything thrown into an AvatarError (unknown errors become connection_failed). */
export function toAvatarError(error, fallbackCode = ErrorCode.CONNECTION_FAILED) {
  if (error instanceof AvatarError) return error;
  return new AvatarError(fallbackCode, error?.message ?? String(error), { cause: error });
}
