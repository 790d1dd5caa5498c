// Chroma key maths: colour parsing, key colour from the frame border, keyed alpha and compositing.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { DEFAULT_KEY, applyChromaKey, estimateKeyColor, keyAlpha, parseColor, toYCbCr } from '../src/chroma.js';
import { Signaling } from '../src/signaling.js';

/** RGBA frame: `background` everywhere, `subject` in the centre half, a few noisy border pixels. */
function frame(width, height, background, subject) {
  const data = new Uint8ClampedArray(width * height * 4);
  for (let y = 0; y < height; y += 1) {
    for (let x = 0; x < width; x += 1) {
      const inside = x >= width / 4 && x < (3 * width) / 4 && y >= height / 4 && y < (3 * height) / 4;
      const [r, g, b] = inside ? subject : background;
      data.set([r, g, b, 255], (y * width + x) * 4);
    }
  }
  data.set([250, 250, 250, 255], 0); // a bright corner pixel (a light, a logo): the median ignores it
  return data;
}

const pixel = (data, width, x, y) => [...data.slice((y * width + x) * 4, (y * width + x) * 4 + 4)];

describe('parseColor', () => {
  it('reads hex, rgb() and common names', () => {
    assert.deepEqual(parseColor('#00ff00'), [0, 255, 0]);
    assert.deepEqual(parseColor('#0f0'), [0, 255, 0]);
    assert.deepEqual(parseColor('#112233ff'), [0x11, 0x22, 0x33]);
    assert.deepEqual(parseColor('rgb(10, 20, 30)'), [10, 20, 30]);
    assert.deepEqual(parseColor('rgba(10 20 30 / 50%)'), [10, 20, 30]);
    assert.deepEqual(parseColor(' Magenta '), [255, 0, 255]);
    assert.equal(parseColor('transparent-ish'), null);
    assert.equal(parseColor(undefined), null);
  });
});

describe('estimateKeyColor', () => {
  it('takes the median colour of the frame border, not the subject', () => {
    const green = [20, 180, 60];
    const data = frame(32, 24, green, [200, 150, 120]);
    assert.deepEqual(estimateKeyColor(data, 32, 24, 2), green);
  });

  it('works on frames smaller than the border band', () => {
    const data = frame(2, 2, [1, 2, 3], [1, 2, 3]);
    assert.equal(estimateKeyColor(data, 2, 2, 8).length, 3);
  });
});

describe('keyAlpha / applyChromaKey', () => {
  const key = [20, 180, 60];
  const keyYcc = toYCbCr(...key);

  it('is 0 on the key colour, 1 far from it, and grows with the distance', () => {
    assert.equal(keyAlpha(...key, keyYcc), 0);
    assert.equal(keyAlpha(200, 150, 120, keyYcc), 1);
    const ramp = [0, 10, 20, 30, 40, 60].map((d) => keyAlpha(key[0] + d, key[1] - d, key[2] + d, keyYcc));
    for (let i = 1; i < ramp.length; i += 1) assert.ok(ramp[i] >= ramp[i - 1], `alpha ramp ${ramp}`);
    assert.ok(ramp[0] === 0 && ramp.at(-1) === 1);
  });

  it('keys a darker shade of the key (a shadow) less than a different hue', () => {
    const shadow = keyAlpha(15, 140, 45, keyYcc);
    const skin = keyAlpha(200, 150, 120, keyYcc);
    assert.ok(shadow < skin);
  });

  it('makes the background transparent and keeps the subject opaque', () => {
    const width = 16;
    const data = frame(width, 16, key, [200, 150, 120]);
    applyChromaKey(data, estimateKeyColor(data, width, 16), null, DEFAULT_KEY);
    assert.equal(pixel(data, width, 1, 1)[3], 0);
    assert.equal(pixel(data, width, 8, 8)[3], 255);
    assert.deepEqual(pixel(data, width, 8, 8).slice(0, 3), [200, 150, 120]);
  });

  it('composites a solid background colour under the subject', () => {
    const width = 16;
    const data = frame(width, 16, key, [200, 150, 120]);
    applyChromaKey(data, key, [0, 0, 255], DEFAULT_KEY);
    assert.deepEqual(pixel(data, width, 1, 1), [0, 0, 255, 255]);
    assert.deepEqual(pixel(data, width, 8, 8), [200, 150, 120, 255]);
  });
});

describe('Signaling URLs', () => {
  it('maps http(s) to ws(s) and carries the token', () => {
    const secure = new Signaling({ server: 'https://a.example.test/base/', token: 't k', fetch: null });
    assert.equal(secure.url('/v1/sessions'), 'https://a.example.test/base/v1/sessions');
    assert.equal(secure.socketUrl('/v1/sessions/x/events'), 'wss://a.example.test/base/v1/sessions/x/events?token=t+k');
    const plain = new Signaling({ server: 'http://b.example.test:8000', fetch: null });
    assert.equal(plain.socketUrl('ws://b.example.test:8000/v1/sessions/x/audio'), 'ws://b.example.test:8000/v1/sessions/x/audio');
  });
});
