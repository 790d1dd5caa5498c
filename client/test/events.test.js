// A failed or blocked events socket (issue 12 item 14): reported as `error`, reopened with backoff, and
// status / interrupt() / setText() / sendPose() say so instead of pretending.

import assert from 'node:assert/strict';
import { beforeEach, describe, it } from 'node:test';

import { AvatarClient } from '../src/client.js';
import { ErrorCode } from '../src/errors.js';
import { connectedClient, fakeEnvironment, FakeWebSocket, recordEvents, SERVER, tick, until } from './fakes.js';

let env;
beforeEach(() => {
  env = fakeEnvironment();
  env.config.reconnect = { initialDelayMs: 30, maxDelayMs: 60, maxAttempts: 3 };
});

const types = (events) => events.map(([type]) => type);
const opened = () => FakeWebSocket.instances.filter((s) => s.readyState === 1);

describe('events socket', () => {
  it('blocked at connect: error event, status reconnecting, commands refused, then reopened', async () => {
    FakeWebSocket.behaviour.fail = 2;
    const { client, events } = await connectedClient(env);
    await until(() => types(events).includes('error'));
    assert.equal(events.find(([t]) => t === 'error')[1].code, ErrorCode.EVENTS_LOST);
    assert.equal(events.find(([t]) => t === 'error')[1].fatal, false);
    assert.equal(client.status, 'reconnecting', 'status must not read connected while the socket is down');
    assert.equal(client.interrupt(), false);
    assert.equal(client.sendPose(null), false);
    assert.equal(client.setText('waves'), false);

    await until(() => client.status === 'connected');
    const reopen = events.filter(([t]) => t === 'reconnecting').map(([, d]) => d);
    assert.deepEqual(reopen.map((d) => [d.attempt, d.channel]), [[1, 'events'], [2, 'events']]);
    assert.ok(reopen[1].delayMs > reopen[0].delayMs, 'backoff grows');
    assert.equal(types(events).filter((t) => t === 'error').length, 1, 'one error per outage');
    assert.equal(events.at(-1)[0], 'connected');
    assert.equal(events.at(-1)[1].channel, 'events');
    assert.equal(client.sessionId, 's1');
    assert.equal(env.server.find('POST', '/v1/sessions').length, 1, 'the session was kept');
    const socket = FakeWebSocket.instances.at(-1);
    assert.deepEqual(socket.sent, [{ type: 'set_text', text: 'waves' }], 'the refused text goes out on reopen');
    assert.equal(client.interrupt(), true);
    assert.deepEqual(socket.sent.at(-1), { type: 'interrupt' });
    client.close();
  });

  it('a socket that stays blocked closes the client with reconnect_failed', async () => {
    const { client, events } = await connectedClient(env);
    FakeWebSocket.behaviour.fail = 100;
    FakeWebSocket.instances[0].serverClose(1006);
    await until(() => client.status === 'closed', 3000);
    assert.equal(events.filter(([t]) => t === 'reconnecting').length, 3);
    assert.equal(events.at(-2)[1].code, ErrorCode.RECONNECT_FAILED);
    assert.match(events.at(-2)[1].message, /events channel/);
    assert.deepEqual(env.server.find('DELETE').map((c) => c.path), ['/v1/sessions/s1']);
  });

  it('the media failing while the socket reopens still starts a new session', async () => {
    const { client } = await connectedClient(env);
    FakeWebSocket.behaviour.fail = 1;
    FakeWebSocket.instances[0].serverClose(1006);
    await until(() => client.status === 'reconnecting');
    client.pc.setConnectionState('failed');
    await until(() => client.sessionId === 's2' && client.status === 'connected');
    assert.equal(opened().length >= 1, true);
    client.close();
  });

  it('with reconnect off, a blocked socket fails connect() with events_lost', async () => {
    env.config.reconnect = false;
    FakeWebSocket.behaviour.fail = 1;
    const client = new AvatarClient(env.config);
    const events = recordEvents(client);
    await assert.rejects(client.connect({ server: SERVER, audio: 'none' }), (error) => error.code === ErrorCode.EVENTS_LOST);
    assert.equal(client.status, 'closed');
    assert.equal(events.at(-1)[0], 'closed');
    await tick(20);
  });

  it('close() during the reopening stops it', async () => {
    const { client } = await connectedClient(env);
    FakeWebSocket.behaviour.fail = 1;
    FakeWebSocket.instances[0].serverClose(1006);
    await until(() => client.status === 'reconnecting');
    const sockets = FakeWebSocket.instances.length;
    client.close();
    await tick(100);
    assert.equal(FakeWebSocket.instances.length, sockets);
  });
});
