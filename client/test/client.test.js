// AvatarClient against fake browser APIs: signaling order, audio modes, events, controls, close.

import assert from 'node:assert/strict';
import { beforeEach, describe, it } from 'node:test';

import { AvatarClient } from '../src/client.js';
import { ErrorCode } from '../src/errors.js';
import { connectedClient, fakeEnvironment, FakeMediaStream, FakePeerConnection, FakeTrack, FakeWebSocket, SERVER, tick, until } from './fakes.js';

let env;
beforeEach(() => {
  env = fakeEnvironment();
});

const connected = (options = {}) => connectedClient(env, options);

describe('connect', () => {
  it('fetches ICE servers, then posts the complete (non-trickle) offer, then opens the events socket', async () => {
    const { client, events, pc, socket } = await connected({ token: 'tok', avatar: 'alice', text: 'waves hello' });

    assert.deepEqual(
      env.server.calls.map((c) => `${c.method} ${c.path}`),
      ['GET /v1/ice-servers', 'POST /v1/sessions'],
    );
    assert.deepEqual(pc.config.iceServers, [{ urls: ['stun:stun.example.test:3478'] }]);
    const offer = env.server.find('POST', '/v1/sessions')[0];
    assert.match(offer.body.sdp, /a=candidate:/, 'the offer is posted after ICE gathering completed');
    assert.equal(offer.body.type, 'offer');
    assert.equal(offer.body.avatar, 'alice');
    assert.equal(offer.body.text, 'waves hello');
    assert.equal(offer.headers.Authorization, 'Bearer tok');
    assert.equal(env.server.calls[0].headers.Authorization, 'Bearer tok');
    assert.deepEqual(pc.remoteDescription, { type: 'answer', sdp: 'answer-s1' });
    assert.equal(socket.url, 'ws://avatars.example.test:8000/v1/sessions/s1/events?token=tok');
    assert.equal(client.audioUrl, 'ws://avatars.example.test:8000/v1/sessions/s1/audio?token=tok');
    assert.equal(client.status, 'connected');
    assert.equal(client.sessionId, 's1');
    assert.deepEqual(events.map(([type]) => type), ['connected']);
    assert.equal(events[0][1].reconnected, false);
  });

  it('uses the token the server issues in the answer on the sockets', async () => {
    const create = env.server.routes['POST /v1/sessions'];
    env.server.routes['POST /v1/sessions'] = async (init) => {
      const answer = await create(init).json();
      return new Response(JSON.stringify({ ...answer, token: 'short-lived' }), { status: 201 });
    };
    const { client, socket } = await connected({ token: 'api-key' });
    assert.equal(socket.url, 'ws://avatars.example.test:8000/v1/sessions/s1/events?token=short-lived');
    assert.equal(client.audioUrl, 'ws://avatars.example.test:8000/v1/sessions/s1/audio?token=short-lived');
    assert.equal(env.server.find('POST', '/v1/sessions')[0].headers.Authorization, 'Bearer api-key');
  });

  it('uses the default avatar and sends no token when none is given', async () => {
    await connected();
    const offer = env.server.find('POST', '/v1/sessions')[0];
    assert.equal(offer.body.avatar, 'default');
    assert.equal('text' in offer.body, false);
    assert.equal(offer.headers.Authorization, undefined);
    assert.equal(FakeWebSocket.instances[0].url, 'ws://avatars.example.test:8000/v1/sessions/s1/events');
  });

  it('exposes an outputStream with the avatar video and audio, and attaches it to videos', async () => {
    const video = { srcObject: null };
    const { client } = await connected();
    client.attach(video);
    assert.equal(client.outputStream.getVideoTracks().length, 1);
    assert.equal(client.outputStream.getAudioTracks().length, 1);
    assert.equal(video.srcObject, client.outputStream);
  });

  it('sends the microphone (sendrecv) and stops it on close', async () => {
    const { client, pc } = await connected({ audio: 'microphone' });
    assert.equal(env.mediaDevices.calls.length, 1);
    assert.equal(env.mediaDevices.calls[0].audio.echoCancellation, true);
    const audio = pc.transceivers.find((t) => t.kind === 'audio');
    const video = pc.transceivers.find((t) => t.kind === 'video');
    assert.equal(audio.direction, 'sendrecv');
    assert.equal(video.direction, 'recvonly');
    const mic = audio.sender.track;
    assert.equal(mic.readyState, 'live');
    client.close();
    assert.equal(mic.readyState, 'ended');
  });

  it("with audio 'none' asks for no microphone and receives audio only", async () => {
    const { pc } = await connected({ audio: 'none' });
    assert.equal(env.mediaDevices.calls.length, 0);
    assert.equal(pc.transceivers.find((t) => t.kind === 'audio').direction, 'recvonly');
  });

  it('sends a given MediaStream and leaves its tracks running on close', async () => {
    const track = new FakeTrack('audio');
    const { client, pc } = await connected({ audio: new FakeMediaStream([track]) });
    assert.equal(pc.transceivers.find((t) => t.kind === 'audio').sender.track, track);
    client.close();
    assert.equal(track.readyState, 'live');
  });

  it('rejects bad audio options with invalid_options', async () => {
    const client = new AvatarClient(env.config);
    await assert.rejects(client.connect({ server: SERVER, audio: 'speakers' }), { code: ErrorCode.INVALID_OPTIONS });
    assert.equal(env.server.calls.length, 0);
  });

  it('refuses a second connect while connected', async () => {
    const { client } = await connected();
    await assert.rejects(client.connect({ server: SERVER }), { code: ErrorCode.INVALID_OPTIONS });
  });

  it('posts the offer with what it has when ICE gathering never completes', async () => {
    FakePeerConnection.behaviour.gather = false;
    const { client } = await connected();
    assert.equal(client.status, 'connected');
    assert.equal(env.server.find('POST', '/v1/sessions').length, 1);
  });
});

describe('events and controls', () => {
  it('turns server messages into state, stats and error events', async () => {
    const { client, events, socket } = await connected();
    socket.serverSend({ type: 'state', state: 'speaking' });
    socket.serverSend({ type: 'stats', fps: 24.8, target_fps: 25, latency_ms_p50: 180, latency_ms_p95: 240, dropped_frames: 0, held_frames: 2 });
    socket.serverSend({ type: 'error', code: 'audio_overflow', detail: 'audio arrives faster than real time' });
    socket.serverSend('not json at all');

    assert.deepEqual(events.slice(1).map(([type]) => type), ['state', 'stats', 'error']);
    assert.deepEqual(events[1][1], { state: 'speaking' });
    assert.equal(client.state, 'speaking');
    assert.equal(events[2][1].fps, 24.8);
    assert.equal(events[2][1].latency_ms_p50, 180);
    assert.equal('type' in events[2][1], false);
    assert.equal(events[3][1].code, ErrorCode.SESSION_ERROR);
    assert.equal(events[3][1].serverCode, 'audio_overflow');
    assert.equal(events[3][1].fatal, false);
    assert.equal(client.status, 'connected');
  });

  it('sends interrupt, set_text and pose on the events socket', async () => {
    const { client, socket } = await connected();
    assert.equal(client.interrupt(), true);
    assert.equal(client.setText('smiles'), true);
    assert.equal(client.setText(null), true);
    assert.equal(client.sendPose([[0.5, 0.2, 1], [0.4, 0.5, 0.9]]), true);
    assert.equal(client.sendPose(null), true);
    assert.deepEqual(socket.sent, [
      { type: 'interrupt' },
      { type: 'set_text', text: 'smiles' },
      { type: 'set_text', text: null },
      { type: 'pose', keypoints: [[0.5, 0.2, 1], [0.4, 0.5, 0.9]] },
      { type: 'pose', keypoints: null },
    ]);
  });

  it('queues control messages until the socket opens', async () => {
    const { client, socket } = await connected();
    socket.readyState = 0;
    assert.equal(client.interrupt(), true);
    assert.equal(client.setText('hums'), true);
    assert.deepEqual(socket.sent, []);
    socket.readyState = 1;
    socket.dispatchEvent(new Event('open'));
    assert.deepEqual(socket.sent, [{ type: 'interrupt' }, { type: 'set_text', text: 'hums' }]);
  });

  it('rejects malformed keypoints', async () => {
    const { client, socket } = await connected();
    assert.throws(() => client.sendPose([[0.5, 0.2]]), { code: ErrorCode.INVALID_OPTIONS });
    assert.throws(() => client.sendPose([[0.5, NaN, 1]]), { code: ErrorCode.INVALID_OPTIONS });
    assert.throws(() => client.sendPose('head up'), { code: ErrorCode.INVALID_OPTIONS });
    assert.deepEqual(socket.sent, []);
  });

  it('returns false from controls when not connected', () => {
    const client = new AvatarClient(env.config);
    assert.equal(client.interrupt(), false);
    assert.equal(client.setText('x'), false);
  });

  it("closes (without reconnecting) when the server reports state 'closed'", async () => {
    const { client, events, socket } = await connected();
    socket.serverSend({ type: 'state', state: 'closed' });
    assert.equal(client.status, 'closed');
    assert.deepEqual(events.at(-1), ['closed', { reason: 'server', error: null }]);
    await tick(20);
    assert.equal(env.server.find('POST', '/v1/sessions').length, 1);
    assert.equal(env.server.find('DELETE').length, 0, 'the server already ended it');
  });
});

describe('close', () => {
  it('ends the server session, closes socket and peer connection, emits closed once', async () => {
    const { client, events, pc, socket } = await connected();
    const ending = client.close();
    assert.equal(client.close(), ending);
    assert.notEqual(pc.connectionState, 'closed', 'the peer connection outlives the DELETE request');
    await ending;
    assert.equal(pc.connectionState, 'closed');
    assert.equal(socket.readyState, 3);
    assert.deepEqual(env.server.find('DELETE').map((c) => c.path), ['/v1/sessions/s1']);
    assert.equal(env.server.find('DELETE')[0].init.keepalive, true);
    assert.deepEqual(events.filter(([type]) => type === 'closed'), [['closed', { reason: 'client', error: null }]]);
    assert.equal(client.status, 'closed');
  });

  it('can connect again after close', async () => {
    const { client } = await connected();
    client.close();
    await client.connect({ server: SERVER, audio: 'none' });
    assert.equal(client.status, 'connected');
    assert.equal(client.sessionId, 's2');
  });

  it('close while the microphone prompt is open stops the microphone it then gets', async () => {
    let grant;
    env.config.mediaDevices = { getUserMedia: () => new Promise((resolve) => (grant = resolve)) };
    const client = new AvatarClient(env.config);
    const pending = client.connect({ server: SERVER, audio: 'microphone' });
    await until(() => grant);
    client.close();
    const mic = new FakeTrack('audio');
    grant(new FakeMediaStream([mic]));
    await assert.rejects(pending, { code: ErrorCode.CONNECTION_FAILED });
    assert.equal(mic.readyState, 'ended');
    assert.equal(env.server.calls.length, 0);
  });

  it('close while fetching ICE servers leaves no peer connection behind', async () => {
    let answer;
    const ice = env.server.routes['GET /v1/ice-servers'];
    env.server.routes['GET /v1/ice-servers'] = () => new Promise((resolve) => (answer = () => resolve(ice())));
    const client = new AvatarClient(env.config);
    const pending = client.connect({ server: SERVER, audio: 'none' });
    await until(() => answer);
    client.close();
    answer();
    await assert.rejects(pending, { code: ErrorCode.CONNECTION_FAILED });
    assert.equal(FakePeerConnection.instances.length, 0);
  });

  it('close while the session is being created deletes it once it exists', async () => {
    let answer;
    const create = env.server.routes['POST /v1/sessions'];
    env.server.routes['POST /v1/sessions'] = (init) => new Promise((resolve) => (answer = () => resolve(create(init))));
    const client = new AvatarClient(env.config);
    const pending = client.connect({ server: SERVER, audio: 'none' });
    await until(() => answer);
    client.close();
    answer();
    await assert.rejects(pending, { code: ErrorCode.CONNECTION_FAILED });
    await until(() => env.server.find('DELETE').length === 1);
    assert.equal(env.server.find('DELETE')[0].path, '/v1/sessions/s1');
    assert.equal(FakePeerConnection.instances[0].connectionState, 'closed');
  });

  it('close during connect stops the attempt', async () => {
    FakePeerConnection.behaviour.connect = false;
    const client = new AvatarClient(env.config);
    const pending = client.connect({ server: SERVER, audio: 'none' });
    await until(() => client.sessionId === 's1');
    client.close();
    await assert.rejects(pending, { code: ErrorCode.CONNECTION_FAILED });
    assert.equal(client.status, 'closed');
  });
});

describe('avatars', () => {
  it('uploads an image as multipart, with its name and, when given, where its mouth is', async () => {
    const { Signaling } = await import('../src/signaling.js');
    const server = fakeServerWithAvatars();
    const signaling = new Signaling({ server: SERVER, fetch: server.fetch });
    const image = new Blob([new Uint8Array([137, 80, 78, 71])], { type: 'image/png' });
    await signaling.uploadAvatar(image, 'me', { x: 0.48, y: 0.675, width: 0.19 });
    await signaling.uploadAvatar(image, 'plain');
    const [placed, plain] = server.find('POST', '/v1/avatars').map((call) => call.body);
    assert.equal(placed.get('name'), 'me');
    assert.equal(placed.get('mouth'), '0.48,0.675,0.19');
    assert.ok(placed.get('image') instanceof Blob);
    assert.equal(plain.get('mouth'), null, 'no mouth field unless one is given');
  });
});

/** The fake server with POST /v1/avatars answering 201. */
function fakeServerWithAvatars() {
  const server = fakeEnvironment().server;
  server.routes['POST /v1/avatars'] = () =>
    new Response(JSON.stringify({ id: 'av_1', name: 'me' }), { status: 201, headers: { 'content-type': 'application/json' } });
  return server;
}
