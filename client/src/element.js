// <omnilive-avatar>: a live avatar in one tag, with chroma-keyed transparent or coloured backgrounds.

import { AvatarClient } from './client.js';
import { ChromaKeyer, DEFAULT_KEY, parseColor } from './chroma.js';

/** Client events the element re-dispatches (bubbling, composed) with the same `detail`. */
export const FORWARDED_EVENTS = Object.freeze(['connected', 'state', 'stats', 'error', 'reconnecting', 'closed']);

/** Attributes whose change restarts a running session. */
const SESSION_ATTRIBUTES = new Set(['server', 'avatar', 'token', 'audio', 'text']);

const STYLE = `
:host { display: block; position: relative; overflow: hidden; contain: content; }
:host([hidden]) { display: none; }
video, canvas { position: absolute; inset: 0; width: 100%; height: 100%; object-fit: contain; display: block; }
canvas { pointer-events: none; }
:host([data-keyed]) video { opacity: 0; }
:host(:not([data-keyed])) canvas { visibility: hidden; }
`;

const Base = globalThis.HTMLElement ?? class {};

/**
 * Attributes: server, avatar, token, audio ('microphone' | 'none'), text, background
 * ('none' | 'transparent' | a CSS colour), key-color, key-tolerance, renderer ('auto' | 'webgl' |
 * 'canvas'), muted, manual (do not connect on insertion; call start()).
 */
export class OmniliveAvatarElement extends Base {
  static get observedAttributes() {
    return ['server', 'avatar', 'token', 'audio', 'text', 'background', 'key-color', 'key-tolerance', 'renderer', 'muted'];
  }

  constructor() {
    super();
    const root = this.attachShadow({ mode: 'open' });
    root.innerHTML = `<style>${STYLE}</style><video part="video" playsinline autoplay></video><canvas part="canvas"></canvas>`;
    /** The <video> that plays the avatar stream (also when keyed: it feeds the canvas). */
    this.video = root.querySelector('video');
    /** The canvas the keyed frames are drawn on. */
    this.canvas = root.querySelector('canvas');
    /** The AvatarClient of the current session (null before start()). */
    this.client = null;
    this.keyer = null;
    this.frameRequest = null;
    this.colorLookup = null;
  }

  //------------------------------------------------------------------ lifecycle

  connectedCallback() {
    this.applyBackground();
    if (!this.hasAttribute('manual') && !this.client) this.start().catch(() => {});
  }

  disconnectedCallback() {
    this.stop();
  }

  attributeChangedCallback(name, previous, value) {
    if (previous === value) return;
    if (name === 'muted') this.video.muted = value !== null;
    else if (name === 'renderer') {
      this.keyer?.destroy();
      this.keyer = null;
      this.resetCanvas();
      this.applyBackground();
    } else if (name === 'background' || name === 'key-color' || name === 'key-tolerance') this.applyBackground();
    else if (SESSION_ATTRIBUTES.has(name) && this.client && this.client.status !== 'closed') {
      if (name === 'text') this.client.setText(value);
      else this.start().catch(() => {});
    }
  }

  //------------------------------------------------------------------ public API

  /** Connect with the current attributes (restarting a running session). */
  async start() {
    this.stop();
    const client = new AvatarClient();
    this.client = client;
    for (const type of FORWARDED_EVENTS) {
      client.addEventListener(type, (event) => {
        if (this.client === client) this.dispatchEvent(new CustomEvent(type, { detail: event.detail, bubbles: true, composed: true }));
      });
    }
    client.addEventListener('connected', () => this.play());
    client.attach(this.video);
    const options = {
      server: this.getAttribute('server') || undefined,
      avatar: this.getAttribute('avatar') || undefined,
      token: this.getAttribute('token') || undefined,
      audio: this.getAttribute('audio') || 'none',
      text: this.getAttribute('text') || undefined,
    };
    await client.connect(options);
  }

  /** End the session (the element stays and can start() again); resolves once the server knows. */
  stop() {
    const client = this.client;
    if (!client) return Promise.resolve();
    const ending = client.close();
    client.detach(this.video);
    return ending;
  }

  /** Barge-in on the current session. */
  interrupt() {
    return this.client?.interrupt() ?? false;
  }

  /** Change the text condition of the current session. */
  setText(text) {
    return this.client?.setText(text) ?? false;
  }

  /** Drive the pose of the current session. */
  sendPose(keypoints) {
    return this.client?.sendPose(keypoints) ?? false;
  }

  /** The avatar video + synced audio of the current session. */
  get outputStream() {
    return this.client?.outputStream ?? null;
  }

  /** 'webgl' | 'canvas' while keying, null otherwise. */
  get renderer() {
    return this.keyer?.kind ?? null;
  }

  //------------------------------------------------------------------ rendering

  /** Start playback; when the browser blocks audible autoplay, play muted and say so. */
  play() {
    this.video.play().catch(() => {
      if (this.video.muted) return;
      this.video.muted = true;
      this.video.play().catch(() => {});
      this.dispatchEvent(new CustomEvent('autoplay-blocked', { bubbles: true, composed: true }));
    });
  }

  /** Read background / key attributes; start or stop the keying loop. */
  applyBackground() {
    const mode = (this.getAttribute('background') || 'none').trim();
    const keyed = mode !== 'none';
    this.toggleAttribute('data-keyed', keyed);
    if (!keyed) {
      this.cancelFrame();
      return;
    }
    this.colorLookup ??= document.createElement('canvas').getContext('2d');
    const lookup = this.colorLookup;
    this.background = mode === 'transparent' ? null : parseColor(mode, lookup);
    this.key = this.hasAttribute('key-color') ? parseColor(this.getAttribute('key-color'), lookup) : null;
    const tolerance = Number.parseFloat(this.getAttribute('key-tolerance') ?? '');
    this.params = Number.isFinite(tolerance) ? { ...DEFAULT_KEY, similarity: tolerance } : DEFAULT_KEY;
    if (!this.keyer) this.keyer = new ChromaKeyer(this.canvas, { renderer: this.getAttribute('renderer') || 'auto' });
    if (this.frameRequest === null) this.requestFrame();
  }

  /** A fresh canvas: a canvas keeps the first context type it was given. */
  resetCanvas() {
    const canvas = document.createElement('canvas');
    canvas.setAttribute('part', 'canvas');
    this.canvas.replaceWith(canvas);
    this.canvas = canvas;
  }

  /** Draw keyed frames as the video presents them (requestVideoFrameCallback, else animation frames). */
  requestFrame() {
    const draw = () => {
      this.frameRequest = null;
      if (!this.hasAttribute('data-keyed') || !this.keyer) return;
      if (this.video.readyState >= 2) this.keyer.draw(this.video, { key: this.key, background: this.background, params: this.params });
      this.requestFrame();
    };
    this.frameRequest = this.video.requestVideoFrameCallback
      ? { video: this.video.requestVideoFrameCallback(draw) }
      : { animation: requestAnimationFrame(draw) };
  }

  cancelFrame() {
    if (!this.frameRequest) return;
    if ('video' in this.frameRequest) this.video.cancelVideoFrameCallback(this.frameRequest.video);
    else cancelAnimationFrame(this.frameRequest.animation);
    this.frameRequest = null;
  }
}

if (globalThis.customElements && !globalThis.customElements.get('omnilive-avatar')) {
  globalThis.customElements.define('omnilive-avatar', OmniliveAvatarElement);
}
