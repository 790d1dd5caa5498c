// Error paths of connect(): denied microphone, unreachable server, 503 + Retry-After, bad token, ICE failure.

import assert from 'node:assert/strict';
import { beforeEach, describe, it } from 'node:test';

import { AvatarClient } from '../src/client.js';
import { ErrorCode, errorFromMedia, parseRetryAfter } from '../src/errors.js';
import { FakePeerConnection, fakeEnvironment, problem, recordEvents } from './fakes.js';

const SERVER = 'http://avatars.example.test:8000';

let env;
beforeEach(() => {
  env = fakeEnvironment();
});

/** Connect expecting failure; returns the rejection and the events. */
async function failing(options = {}, environment = env) {
  const client = new AvatarClient(environment.config);
  const events = recordEvents(client);
  let error = null;
  try {
    await client.connect({ server: SERVER, audio: 'none', ...options });
  } catch (thrown) {
    error = thrown;
  }
  assert.ok(error, 'connect() must reject');
  return { client, events, error };
}

/** The error event then the closed event, with the same code. */
function assertErrorThenClosed(events, code) {
  assert.deepEqual(events.map(([type]) => type), ['error', 'closed']);
  assert.equal(events[0][1].code, code);
  assert.equal(events[1][1].reason, 'error');
  assert.equal(events[1][1].error.code, code);
}

describe('connect errors', () => {
  it('microphone denied -> microphone_denied, nothing sent to the server', async () => {
    const denied = fakeEnvironment({ deny: 'NotAllowedError' });
    const { client, events, error } = await failing({ audio: 'microphone' }, denied);
    assert.equal(error.code, ErrorCode.MICROPHONE_DENIED);
    assert.equal(error.fatal, true);
    assertErrorThenClosed(events, ErrorCode.MICROPHONE_DENIED);
    assert.equal(denied.server.calls.length, 0);
    assert.equal(client.status, 'closed');
  });

  it('no microphone -> microphone_unavailable', async () => {
    const missing = fakeEnvironment({ deny: 'NotFoundError' });
    const { error } = await failing({ audio: 'microphone' }, missing);
    assert.equal(error.code, ErrorCode.MICROPHONE_UNAVAILABLE);
    assert.equal(errorFromMedia({ name: 'SecurityError' }).code, ErrorCode.MICROPHONE_DENIED);
  });

  it('network failure -> server_unreachable', async () => {
    env.config.fetch = async () => {
      throw new TypeError('Failed to fetch');
    };
    const { events, error } = await failing();
    assert.equal(error.code, ErrorCode.SERVER_UNREACHABLE);
    assert.match(error.message, /unreachable/);
    assertErrorThenClosed(events, ErrorCode.SERVER_UNREACHABLE);
  });

  it('503 -> server_busy with the Retry-After seconds, peer connection closed', async () => {
    env.server.routes['POST /v1/sessions'] = problem(503, 'all 4 session slots are in use', { 'retry-after': '7' });
    const { events, error } = await failing();
    assert.equal(error.code, ErrorCode.SERVER_BUSY);
    assert.equal(error.status, 503);
    assert.equal(error.retryAfter, 7);
    assert.equal(error.detail, 'all 4 session slots are in use');
    assert.equal(events[0][1].retryAfter, 7);
    assert.equal(FakePeerConnection.instances[0].connectionState, 'closed');
  });

  it('429 (session creations rate-limited) -> server_busy with the Retry-After seconds', async () => {
    env.server.routes['POST /v1/sessions'] = problem(429, 'sessions are being created too fast', { 'retry-after': '2' });
    const { error, events } = await failing();
    assert.equal(error.code, ErrorCode.SERVER_BUSY);
    assert.equal(error.status, 429);
    assert.equal(error.retryAfter, 2);
    assertErrorThenClosed(events, ErrorCode.SERVER_BUSY);
  });

  it('503 without Retry-After -> server_busy with retryAfter null', async () => {
    env.server.routes['POST /v1/sessions'] = problem(503, 'full');
    const { error } = await failing();
    assert.equal(error.code, ErrorCode.SERVER_BUSY);
    assert.equal(error.retryAfter, null);
  });

  for (const status of [401, 403]) {
    it(`${status} -> unauthorized`, async () => {
      env.server.routes['GET /v1/ice-servers'] = problem(status, 'invalid token');
      const { events, error } = await failing({ token: 'wrong' });
      assert.equal(error.code, ErrorCode.UNAUTHORIZED);
      assert.equal(error.status, status);
      assertErrorThenClosed(events, ErrorCode.UNAUTHORIZED);
      assert.equal(env.server.find('POST').length, 0);
    });
  }

  it('unknown avatar (404) -> not_found with the server detail', async () => {
    env.server.routes['POST /v1/sessions'] = problem(404, "avatar 'bob' does not exist");
    const { error } = await failing({ avatar: 'bob' });
    assert.equal(error.code, ErrorCode.NOT_FOUND);
    assert.match(error.message, /avatar 'bob' does not exist/);
  });

  it('other 4xx -> request_rejected; 5xx -> server_error', async () => {
    env.server.routes['POST /v1/sessions'] = problem(422, 'fps must be <= 30');
    assert.equal((await failing({ fps: 99 })).error.code, ErrorCode.REQUEST_REJECTED);
    env = fakeEnvironment();
    env.server.routes['POST /v1/sessions'] = problem(500, 'boom');
    assert.equal((await failing()).error.code, ErrorCode.SERVER_ERROR);
  });

  it('an answer without session id -> server_error', async () => {
    env.server.routes['POST /v1/sessions'] = () => new Response('{}', { status: 201 });
    assert.equal((await failing()).error.code, ErrorCode.SERVER_ERROR);
  });

  it('ICE never connects -> connection_failed after the timeout, session deleted', async () => {
    FakePeerConnection.behaviour.connect = false;
    const { events, error } = await failing();
    assert.equal(error.code, ErrorCode.CONNECTION_FAILED);
    assertErrorThenClosed(events, ErrorCode.CONNECTION_FAILED);
    assert.deepEqual(env.server.find('DELETE').map((c) => c.path), ['/v1/sessions/s1']);
  });

  it('ICE failure -> connection_failed at once', async () => {
    FakePeerConnection.behaviour.connect = false;
    const client = new AvatarClient(env.config);
    const pending = client.connect({ server: SERVER, audio: 'none' });
    while (!client.sessionId) await new Promise((r) => setTimeout(r, 1));
    FakePeerConnection.instances[0].setConnectionState('failed');
    await assert.rejects(pending, { code: ErrorCode.CONNECTION_FAILED, message: /failed/ });
  });

  it('a bad server URL -> invalid_options', async () => {
    const { error } = await failing({ server: 'ftp://nope' });
    assert.equal(error.code, ErrorCode.INVALID_OPTIONS);
  });
});

describe('parseRetryAfter', () => {
  it('reads delta seconds and HTTP dates', () => {
    assert.equal(parseRetryAfter('12'), 12);
    assert.equal(parseRetryAfter(null), null);
    assert.equal(parseRetryAfter('soon'), null);
    const now = Date.parse('2026-01-01T00:00:00Z');
    assert.equal(parseRetryAfter('Thu, 01 Jan 2026 00:00:30 GMT', now), 30);
    assert.equal(parseRetryAfter('Wed, 31 Dec 2025 00:00:00 GMT', now), 0);
  });
});
