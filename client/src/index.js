// omnilive browser client: AvatarClient, the <omnilive-avatar> element, chroma key helpers, errors.

export { AvatarClient, DEFAULT_MICROPHONE, DEFAULT_TIMEOUTS, waitForIceGathering } from './client.js';
export { OmniliveAvatarElement, FORWARDED_EVENTS } from './element.js';
export { ChromaKeyer, DEFAULT_KEY, applyChromaKey, estimateKeyColor, keyAlpha, parseColor, toYCbCr } from './chroma.js';
export { AvatarError, ErrorCode, errorFromMedia, errorFromResponse, parseRetryAfter } from './errors.js';
export { DEFAULT_BACKOFF, backoffDelay } from './backoff.js';
export { Signaling, resolveServer } from './signaling.js';
