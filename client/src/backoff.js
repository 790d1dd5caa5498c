// Reconnect delays: exponential backoff with a cap and jitter.

/** Default reconnect policy (milliseconds). */
export const DEFAULT_BACKOFF = Object.freeze({
  initialDelayMs: 500,
  maxDelayMs: 8000,
  factor: 2,
  jitter: 0.2,
  maxAttempts: 6,
});

/**
 * Delay before reconnect attempt `attempt` (0-based): initial * factor^attempt, capped, +-jitter.
 * @param {number} attempt
 * @param {Partial<typeof DEFAULT_BACKOFF>} [policy]
 * @param {() => number} [random] uniform in [0, 1)
 */
export function backoffDelay(attempt, policy = {}, random = Math.random) {
  const p = { ...DEFAULT_BACKOFF, ...policy };
  const base = Math.min(p.maxDelayMs, p.initialDelayMs * p.factor ** attempt);
  const spread = base * p.jitter * (2 * random() - 1);
  return Math.max(0, Math.round(base + spread));
}

/**
 * A sleep that close() can cut short; resolves true when it ran to the end.
 * @param {number} ms
 * @param {AbortSignal} signal
 */
export function sleep(ms, signal) {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve(false);
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve(true);
    }, ms);
    function onAbort() {
      clearTimeout(timer);
      resolve(false);
    }
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
