// The demo page: pick or upload an avatar, start the mic, watch and hear the avatar, read fps and latency.

import { ErrorCode, Signaling } from '/client/src/index.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const server = params.get('server') || location.origin;
const token = params.get('token') || '';
const avatarEl = $('avatar');
const signaling = new Signaling({ server, token });

/** What the user should do about each error code. */
const ADVICE = {
  [ErrorCode.MICROPHONE_DENIED]: 'Microphone access was denied. Allow it in the site settings, or choose "No microphone".',
  [ErrorCode.MICROPHONE_UNAVAILABLE]: 'No usable microphone (none plugged in, in use, or the page is not on https).',
  [ErrorCode.SERVER_UNREACHABLE]: 'The avatar server cannot be reached. Check that it runs and the address is right.',
  [ErrorCode.SERVER_BUSY]: 'The server is full right now.',
  [ErrorCode.UNAUTHORIZED]: 'The server refused the token. Open this page with ?token=<a valid token>.',
  [ErrorCode.NOT_FOUND]: 'That avatar does not exist (any more). Pick another one.',
  [ErrorCode.CONNECTION_FAILED]: 'The video connection could not be set up (firewall, or a network that needs TURN).',
  [ErrorCode.CONNECTION_LOST]: 'Connection lost; reconnecting…',
  [ErrorCode.RECONNECT_FAILED]: 'The connection was lost and could not be restored.',
};

//################################################################################
//                                  UI helpers
//################################################################################

function log(text) {
  const item = document.createElement('li');
  item.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $('log').prepend(item);
  while ($('log').children.length > 200) $('log').lastChild.remove();
}

function showError(error) {
  let text = ADVICE[error.code] ?? error.message;
  if (error.code === ErrorCode.SERVER_BUSY && error.retryAfter != null) text += ` Try again in ${error.retryAfter} s.`;
  if (error.detail && !text.includes(error.detail)) text += ` (${error.detail})`;
  $('error-text').textContent = text;
  $('error').dataset.code = error.code;
  $('error').hidden = false;
}

function hideError() {
  $('error').hidden = true;
  delete $('error').dataset.code;
}

/** Enable the controls that fit the connection status. */
function setStatus(status) {
  $('status').textContent = status;
  document.body.dataset.status = status;
  const live = status === 'connected' || status === 'reconnecting';
  const busy = status === 'connecting' || live;
  $('start').disabled = busy;
  $('stop').disabled = !busy;
  $('interrupt').disabled = status !== 'connected';
  for (const id of ['avatar-select', 'avatar-upload', 'audio-select']) $(id).disabled = busy;
  $('placeholder').hidden = live;
}

//################################################################################
//                                  Avatars
//################################################################################

async function loadAvatars(selected) {
  try {
    const avatars = await signaling.listAvatars();
    const select = $('avatar-select');
    const current = selected ?? select.value;
    select.replaceChildren();
    for (const avatar of avatars) {
      const option = document.createElement('option');
      option.value = avatar.id;
      option.textContent = avatar.name && avatar.name !== avatar.id ? `${avatar.name} (${avatar.id})` : avatar.id;
      select.append(option);
    }
    if (!avatars.length) select.append(new Option('default', 'default'));
    if ([...select.options].some((o) => o.value === current)) select.value = current;
  } catch (error) {
    showError(error);
  }
}

async function uploadAvatar(file) {
  $('upload-status').textContent = `Uploading ${file.name}…`;
  try {
    const avatar = await signaling.uploadAvatar(file, file.name.replace(/\.[^.]+$/, ''));
    await loadAvatars(avatar.id);
    $('upload-status').textContent = `Uploaded as "${avatar.id}".`;
    log(`avatar uploaded: ${avatar.id}`);
  } catch (error) {
    $('upload-status').textContent = '';
    showError(error);
  } finally {
    $('avatar-upload').value = '';
  }
}

//################################################################################
//                                  Session
//################################################################################

let startedAt = null;
let frames = 0;
let firstFrameShown = false;

/** Count frames the <video> presents (requestVideoFrameCallback) and time the first one. */
function countFrames() {
  const video = avatarEl.video;
  const onFrame = () => {
    frames += 1;
    $('frames').textContent = String(frames);
    if (!firstFrameShown) {
      firstFrameShown = true;
      const sinceLoad = performance.now();
      $('first-frame').dataset.msSinceLoad = sinceLoad.toFixed(0);
      $('first-frame').dataset.msSinceStart = (sinceLoad - startedAt).toFixed(0);
      $('first-frame').textContent = `${sinceLoad.toFixed(0)} ms (Start +${(sinceLoad - startedAt).toFixed(0)} ms)`;
      $('first-frame').title = 'from page load to the first avatar frame on screen (and from pressing Start)';
    }
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}

async function start() {
  hideError();
  startedAt = performance.now();
  firstFrameShown = false;
  avatarEl.setAttribute('avatar', $('avatar-select').value);
  avatarEl.setAttribute('audio', $('audio-select').value);
  avatarEl.setAttribute('background', $('background-select').value);
  if (token) avatarEl.setAttribute('token', token);
  if (server !== location.origin) avatarEl.setAttribute('server', server);
  const text = $('text').value.trim();
  if (text) avatarEl.setAttribute('text', text);
  else avatarEl.removeAttribute('text');
  setStatus('connecting');
  try {
    await avatarEl.start();
  } catch {
    // reported through the element's error event
  }
}

avatarEl.addEventListener('connected', (event) => {
  setStatus('connected');
  hideError();
  log(event.detail.reconnected ? `reconnected (session ${event.detail.sessionId})` : `connected (session ${event.detail.sessionId})`);
});
avatarEl.addEventListener('state', (event) => {
  $('state').textContent = event.detail.state;
  document.body.dataset.state = event.detail.state;
  log(`state: ${event.detail.state}`);
});
avatarEl.addEventListener('stats', (event) => {
  const s = event.detail;
  const ms = (value) => (value == null ? '–' : Math.round(value));
  $('fps').textContent = `${s.fps == null ? '–' : Number(s.fps).toFixed(1)} / ${s.target_fps}`;
  $('latency').textContent = `${ms(s.latency_ms_p50)} / ${ms(s.latency_ms_p95)} ms`;
  $('dropped').textContent = `${s.dropped_frames} / ${s.held_frames}`;
});
avatarEl.addEventListener('reconnecting', (event) => {
  setStatus('reconnecting');
  log(`reconnecting (attempt ${event.detail.attempt}, in ${event.detail.delayMs} ms)`);
});
avatarEl.addEventListener('error', (event) => {
  showError(event.detail);
  log(`error: ${event.detail.code}: ${event.detail.message}`);
});
avatarEl.addEventListener('closed', (event) => {
  setStatus('closed');
  $('state').textContent = '–';
  log(`closed (${event.detail.reason})`);
});
avatarEl.addEventListener('autoplay-blocked', () => log('the browser blocked sound until you click the page; playing muted'));

//################################################################################
//                                  Wiring
//################################################################################

$('start').addEventListener('click', start);
$('stop').addEventListener('click', () => avatarEl.stop());
$('interrupt').addEventListener('click', () => {
  if (avatarEl.interrupt()) log('interrupt sent');
});
$('text-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const text = $('text').value.trim();
  if (avatarEl.setText(text)) log(`text set: ${text || '(none)'}`);
});
$('background-select').addEventListener('change', (event) => avatarEl.setAttribute('background', event.target.value));
$('avatar-upload').addEventListener('change', (event) => event.target.files[0] && uploadAvatar(event.target.files[0]));
$('error-dismiss').addEventListener('click', hideError);
addEventListener('pagehide', () => avatarEl.stop());

setStatus('idle');
countFrames();
const wanted = params.get('avatar');
if (wanted) $('avatar-select').add(new Option(wanted, wanted, true, true));
if (params.get('audio')) $('audio-select').value = params.get('audio');
if (params.get('autostart') === '1') start(); // ?autostart=1: connect at once (kiosks, first-frame timing)
loadAvatars(wanted);
