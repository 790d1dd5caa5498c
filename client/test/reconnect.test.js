// Reconnect after network loss: backoff, Retry-After, giving up, the grace period of 'disconnected'.

import assert from 'node:assert/strict';
import { beforeEach, describe, it } from 'node:test';

import { backoffDelay } from '../src/backoff.js';
import { ErrorCode } from '../src/errors.js';
import { connectedClient, fakeEnvironment, FakePeerConnection, FakeWebSocket, problem, tick, until } from './fakes.js';

let env;
beforeEach(() => {
  env = fakeEnvironment();
});

const connected = (options = {}) => connectedClient(env, options);

const types = (events) => events.map(([type]) => type);

describe('reconnect', () => {
  it('reconnects after the peer connection fails: new session, new outputStream, same videos', async () => {
    const { client, events } = await connected({ text: 'nods' });
    const video = client.attach({ srcObject: null });
    const firstStream = client.outputStream;
    client.setText('laughs');
    FakePeerConnection.instances[0].setConnectionState('failed');
    await until(() => events.filter(([t]) => t === 'connected').length === 2);

    assert.deepEqual(types(events), ['connected', 'error', 'reconnecting', 'connected']);
    assert.equal(events[1][1].code, ErrorCode.CONNECTION_LOST);
    assert.equal(events[1][1].fatal, false);
    assert.equal(events[2][1].attempt, 1);
    assert.equal(events[3][1].reconnected, true);
    assert.equal(client.sessionId, 's2');
    assert.notEqual(client.outputStream, firstStream);
    assert.equal(video.srcObject, client.outputStream);
    assert.deepEqual(env.server.find('DELETE').map((c) => c.path), ['/v1/sessions/s1']);
    const posts = env.server.find('POST', '/v1/sessions');
    assert.equal(posts[1].body.text, 'laughs', 'the latest text survives the reconnect');
    assert.equal(env.server.find('GET', '/v1/ice-servers').length, 2, 'ICE servers are fetched again');
    assert.equal(FakeWebSocket.instances[1].url, 'ws://avatars.example.test:8000/v1/sessions/s2/events');
  });

  it('reopens the events socket of the same session when it drops', async () => {
    const { client, events } = await connected();
    FakeWebSocket.instances[0].serverClose();
    await until(() => client.status === 'connected' && FakeWebSocket.instances.length === 2);
    assert.deepEqual(types(events), ['connected', 'error', 'reconnecting', 'connected']);
    assert.equal(events[1][1].code, ErrorCode.EVENTS_LOST);
    assert.equal(events[3][1].channel, 'events');
    assert.equal(client.sessionId, 's1', 'the session goes on');
    assert.equal(env.server.find('POST', '/v1/sessions').length, 1);
  });

  it('starts a new session when the events socket says the session is gone (4404)', async () => {
    const { client, events } = await connected();
    FakeWebSocket.instances[0].serverClose(4404);
    await until(() => client.sessionId === 's2' && client.status === 'connected');
    assert.deepEqual(types(events), ['connected', 'error', 'reconnecting', 'connected']);
    assert.equal(events[1][1].code, ErrorCode.CONNECTION_LOST);
  });

  it("rides out a short 'disconnected' without reconnecting", async () => {
    env.config.timeouts = { ...env.config.timeouts, disconnectGraceMs: 100 };
    const { client, events } = await connected();
    const pc = FakePeerConnection.instances[0];
    pc.setConnectionState('disconnected');
    pc.setConnectionState('connected');
    await tick(250);
    assert.deepEqual(types(events), ['connected']);
    assert.equal(client.sessionId, 's1');
  });

  it("treats a long 'disconnected' as lost", async () => {
    const { client } = await connected();
    FakePeerConnection.instances[0].setConnectionState('disconnected');
    await until(() => client.sessionId === 's2' && client.status === 'connected');
  });

  it('waits at least Retry-After when the server is busy during a reconnect', async () => {
    const { client, events } = await connected();
    let busy = 1;
    const create = env.server.routes['POST /v1/sessions'];
    env.server.routes['POST /v1/sessions'] = (init) => (busy-- > 0 ? problem(503, 'full', { 'retry-after': '1' })() : create(init));
    FakePeerConnection.instances[0].setConnectionState('failed');
    await until(() => client.status === 'connected' && client.sessionId === 's2', 3000);
    const waits = events.filter(([t]) => t === 'reconnecting').map(([, d]) => d);
    assert.equal(waits.length, 2);
    assert.equal(waits[1].error.code, ErrorCode.SERVER_BUSY);
    assert.ok(waits[1].delayMs >= 1000, `waited ${waits[1].delayMs} ms after Retry-After: 1`);
  });

  it('gives up at once on a bad token', async () => {
    const { client, events } = await connected();
    env.server.routes['GET /v1/ice-servers'] = problem(401, 'token expired');
    FakePeerConnection.instances[0].setConnectionState('failed');
    await until(() => client.status === 'closed');
    assert.deepEqual(types(events), ['connected', 'error', 'reconnecting', 'error', 'closed']);
    assert.equal(events[3][1].code, ErrorCode.RECONNECT_FAILED);
    assert.equal(events[3][1].status, 401);
  });

  it('gives up after maxAttempts when the server stays away', async () => {
    const { client, events } = await connected();
    env.config.fetch = null;
    client.signaling.fetch = async () => {
      throw new TypeError('Failed to fetch');
    };
    FakePeerConnection.instances[0].setConnectionState('failed');
    await until(() => client.status === 'closed');
    assert.equal(events.filter(([t]) => t === 'reconnecting').length, 3);
    assert.equal(events.at(-2)[1].code, ErrorCode.RECONNECT_FAILED);
    assert.match(events.at(-2)[1].message, /unreachable/);
  });

  it('close() during the backoff stops reconnecting', async () => {
    env.config.reconnect = { initialDelayMs: 200, maxAttempts: 3 };
    const { client, events } = await connected();
    FakePeerConnection.instances[0].setConnectionState('failed');
    await until(() => client.status === 'reconnecting');
    client.close();
    await tick(250);
    assert.equal(env.server.find('POST', '/v1/sessions').length, 1);
    assert.deepEqual(events.at(-1), ['closed', { reason: 'client', error: null }]);
  });

  it('with reconnect disabled a loss closes the client with connection_lost', async () => {
    env.config.reconnect = false;
    const { client, events } = await connected();
    FakePeerConnection.instances[0].setConnectionState('failed');
    assert.equal(client.status, 'closed');
    assert.deepEqual(types(events), ['connected', 'error', 'closed']);
    assert.equal(events[1][1].code, ErrorCode.CONNECTION_LOST);
  });
});

describe('backoffDelay', () => {
  it('grows exponentially up to the cap, with bounded jitter', () => {
    const policy = { initialDelayMs: 100, maxDelayMs: 1000, factor: 2, jitter: 0.2 };
    const mid = () => 0.5;
    assert.deepEqual([0, 1, 2, 3, 4, 5].map((a) => backoffDelay(a, policy, mid)), [100, 200, 400, 800, 1000, 1000]);
    assert.equal(backoffDelay(0, policy, () => 0), 80);
    assert.equal(backoffDelay(0, policy, () => 0.999999), 120);
  });
});
