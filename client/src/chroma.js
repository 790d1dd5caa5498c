// Chroma key: make the avatar's studio background transparent (or another colour) in a canvas.
// The key colour comes from the frame's border unless given; WebGL does the keying, with a 2D-canvas fallback.

//################################################################################
//                                  Defaults
//################################################################################

/** Keying parameters: distances in normalised YCbCr (luma weighted down), 0..1. */
export const DEFAULT_KEY = Object.freeze({
  /** Distance below which a pixel is fully keyed out. */
  similarity: 0.12,
  /** Width of the soft edge above `similarity`. */
  smoothness: 0.08,
  /** Weight of the luma difference against the chroma difference (shadows and light changes). */
  lumaWeight: 0.5,
  /** Border band (in sampled pixels) the key colour is estimated from. */
  border: 2,
  /** Width of the small canvas the key colour is estimated on. */
  sampleWidth: 64,
  /** Frames between key colour re-estimates (a background can change as the model warms up). */
  refreshFrames: 25,
});

const NAMED = Object.freeze({
  black: [0, 0, 0],
  white: [255, 255, 255],
  red: [255, 0, 0],
  lime: [0, 255, 0],
  green: [0, 128, 0],
  blue: [0, 0, 255],
  magenta: [255, 0, 255],
  fuchsia: [255, 0, 255],
  cyan: [0, 255, 255],
  yellow: [255, 255, 0],
  gray: [128, 128, 128],
  grey: [128, 128, 128],
});

//################################################################################
//                                  Colour maths
//################################################################################

/**
 * Parse a CSS colour to [r, g, b] (0..255): #rgb, #rrggbb, rgb()/rgba(), a few names; null if not.
 * Browsers pass a 2D context to resolve every other CSS colour name.
 * @param {string} text
 * @param {CanvasRenderingContext2D} [ctx]
 */
export function parseColor(text, ctx) {
  if (typeof text !== 'string') return null;
  const value = text.trim().toLowerCase();
  let m = /^#([0-9a-f]{3})$/.exec(value);
  if (m) return [...m[1]].map((c) => parseInt(c + c, 16));
  m = /^#([0-9a-f]{6})([0-9a-f]{2})?$/.exec(value);
  if (m) return [0, 2, 4].map((i) => parseInt(m[1].slice(i, i + 2), 16));
  m = /^rgba?\(\s*(\d+)[\s,]+(\d+)[\s,]+(\d+)/.exec(value);
  if (m) return [m[1], m[2], m[3]].map((v) => Math.min(255, Number(v)));
  if (NAMED[value]) return [...NAMED[value]];
  if (ctx && /^[a-z]+$/.test(value)) {
    ctx.fillStyle = '#010203';
    ctx.fillStyle = value;
    const resolved = ctx.fillStyle;
    if (resolved !== '#010203') return parseColor(resolved);
  }
  return null;
}

/** [r, g, b] 0..255 -> [y, cb, cr] 0..1 (BT.601). */
export function toYCbCr(r, g, b) {
  const R = r / 255;
  const G = g / 255;
  const B = b / 255;
  return [
    0.299 * R + 0.587 * G + 0.114 * B,
    0.5 - 0.168736 * R - 0.331264 * G + 0.5 * B,
    0.5 + 0.5 * R - 0.418688 * G - 0.081312 * B,
  ];
}

/** Hermite smoothstep as in GLSL. */
function smoothstep(edge0, edge1, x) {
  const t = Math.min(1, Math.max(0, (x - edge0) / (edge1 - edge0)));
  return t * t * (3 - 2 * t);
}

/**
 * Opacity of one pixel against the key: 0 = background, 1 = avatar. Mirrors the WebGL shader.
 * @param {number[]} keyYcc key colour from toYCbCr
 */
export function keyAlpha(r, g, b, keyYcc, params = DEFAULT_KEY) {
  const [y, cb, cr] = toYCbCr(r, g, b);
  const dy = (y - keyYcc[0]) * params.lumaWeight;
  const dcb = cb - keyYcc[1];
  const dcr = cr - keyYcc[2];
  const distance = Math.sqrt(dy * dy + dcb * dcb + dcr * dcr);
  return smoothstep(params.similarity, params.similarity + params.smoothness, distance);
}

/**
 * Key colour of a frame: the per-channel median of a band of `border` pixels around its edge.
 * @param {Uint8ClampedArray|Uint8Array} data RGBA, row-major
 */
export function estimateKeyColor(data, width, height, border = DEFAULT_KEY.border) {
  const band = Math.max(1, Math.min(border, Math.floor(Math.min(width, height) / 2)));
  const channels = [[], [], []];
  for (let y = 0; y < height; y += 1) {
    const edgeRow = y < band || y >= height - band;
    for (let x = 0; x < width; x += 1) {
      if (!edgeRow && x >= band && x < width - band) continue;
      const i = (y * width + x) * 4;
      channels[0].push(data[i]);
      channels[1].push(data[i + 1]);
      channels[2].push(data[i + 2]);
    }
  }
  return channels.map((values) => {
    values.sort((a, b) => a - b);
    return values[values.length >> 1];
  });
}

/**
 * Key an RGBA buffer in place (the 2D-canvas path). `background` null = transparent, else [r, g, b]
 * composited under the avatar.
 */
export function applyChromaKey(data, keyRgb, background = null, params = DEFAULT_KEY) {
  const keyYcc = toYCbCr(...keyRgb);
  for (let i = 0; i < data.length; i += 4) {
    const alpha = keyAlpha(data[i], data[i + 1], data[i + 2], keyYcc, params);
    if (background) {
      data[i] = Math.round(data[i] * alpha + background[0] * (1 - alpha));
      data[i + 1] = Math.round(data[i + 1] * alpha + background[1] * (1 - alpha));
      data[i + 2] = Math.round(data[i + 2] * alpha + background[2] * (1 - alpha));
      data[i + 3] = 255;
    } else {
      data[i + 3] = Math.round(alpha * 255);
    }
  }
  return data;
}

//################################################################################
//                                  WebGL path
//################################################################################

const VERTEX_SHADER = `
attribute vec2 a_position;
varying vec2 v_uv;
void main() {
  v_uv = vec2(0.5 * (a_position.x + 1.0), 0.5 * (1.0 - a_position.y));
  gl_Position = vec4(a_position, 0.0, 1.0);
}`;

const FRAGMENT_SHADER = `
precision mediump float;
uniform sampler2D u_frame;
uniform vec3 u_key;          // key colour in YCbCr
uniform vec4 u_background;   // rgb + alpha (0 = transparent)
uniform vec3 u_params;       // similarity, smoothness, luma weight
varying vec2 v_uv;
vec3 ycc(vec3 c) {
  return vec3(dot(c, vec3(0.299, 0.587, 0.114)),
              0.5 + dot(c, vec3(-0.168736, -0.331264, 0.5)),
              0.5 + dot(c, vec3(0.5, -0.418688, -0.081312)));
}
void main() {
  vec3 rgb = texture2D(u_frame, v_uv).rgb;
  vec3 d = ycc(rgb) - u_key;
  d.x *= u_params.z;
  float alpha = smoothstep(u_params.x, u_params.x + u_params.y, length(d));
  vec3 under = u_background.rgb * u_background.a;
  float outAlpha = alpha + u_background.a * (1.0 - alpha);
  gl_FragColor = vec4(rgb * alpha + under * (1.0 - alpha), outAlpha);  // premultiplied
}`;

/** Compile and link the keying program; throws when the context refuses. */
function buildProgram(gl) {
  const compile = (type, source) => {
    const shader = gl.createShader(type);
    gl.shaderSource(shader, source);
    gl.compileShader(shader);
    if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(shader) ?? 'shader');
    return shader;
  };
  const program = gl.createProgram();
  gl.attachShader(program, compile(gl.VERTEX_SHADER, VERTEX_SHADER));
  gl.attachShader(program, compile(gl.FRAGMENT_SHADER, FRAGMENT_SHADER));
  gl.linkProgram(program);
  if (!gl.getProgramParameter(program, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(program) ?? 'link');
  return program;
}

/** Draws keyed video frames with a fragment shader. */
class WebGLKeyer {
  constructor(canvas) {
    const gl = canvas.getContext('webgl', { premultipliedAlpha: true, alpha: true, antialias: false, preserveDrawingBuffer: false });
    if (!gl) throw new Error('webgl unavailable');
    this.gl = gl;
    this.program = buildProgram(gl);
    gl.useProgram(this.program);
    const quad = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, quad);
    gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), gl.STATIC_DRAW);
    const position = gl.getAttribLocation(this.program, 'a_position');
    gl.enableVertexAttribArray(position);
    gl.vertexAttribPointer(position, 2, gl.FLOAT, false, 0, 0);
    this.texture = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, this.texture);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.LINEAR);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.LINEAR);
    this.uniforms = Object.fromEntries(
      ['u_frame', 'u_key', 'u_background', 'u_params'].map((name) => [name, gl.getUniformLocation(this.program, name)]),
    );
    gl.uniform1i(this.uniforms.u_frame, 0);
  }

  draw(source, width, height, keyRgb, background, params) {
    const gl = this.gl;
    gl.viewport(0, 0, width, height);
    gl.bindTexture(gl.TEXTURE_2D, this.texture);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGB, gl.RGB, gl.UNSIGNED_BYTE, source);
    gl.uniform3fv(this.uniforms.u_key, toYCbCr(...keyRgb));
    const bg = background ? [...background.map((v) => v / 255), 1] : [0, 0, 0, 0];
    gl.uniform4fv(this.uniforms.u_background, bg);
    gl.uniform3fv(this.uniforms.u_params, [params.similarity, params.smoothness, params.lumaWeight]);
    gl.clearColor(0, 0, 0, 0);
    gl.clear(gl.COLOR_BUFFER_BIT);
    gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
  }

  destroy() {
    this.gl.getExtension('WEBGL_lose_context')?.loseContext();
  }
}

//################################################################################
//                                  2D-canvas path
//################################################################################

/** Draws keyed video frames on the CPU (getImageData / putImageData). */
class CanvasKeyer {
  constructor(canvas) {
    const ctx = canvas.getContext('2d', { willReadFrequently: true, alpha: true });
    if (!ctx) throw new Error('2d canvas unavailable');
    this.ctx = ctx;
  }

  draw(source, width, height, keyRgb, background, params) {
    this.ctx.clearRect(0, 0, width, height);
    this.ctx.drawImage(source, 0, 0, width, height);
    const image = this.ctx.getImageData(0, 0, width, height);
    applyChromaKey(image.data, keyRgb, background, params);
    this.ctx.putImageData(image, 0, 0);
  }

  destroy() {}
}

//################################################################################
//                                  ChromaKeyer
//################################################################################

/** Keys video frames into a canvas; picks WebGL, falls back to the 2D canvas. */
export class ChromaKeyer {
  /**
   * @param {HTMLCanvasElement} canvas output
   * @param {{renderer?: 'auto' | 'webgl' | 'canvas', document?: Document}} [options]
   */
  constructor(canvas, { renderer = 'auto', document = globalThis.document } = {}) {
    this.canvas = canvas;
    this.keyer = null;
    if (renderer !== 'canvas') {
      try {
        this.keyer = new WebGLKeyer(canvas);
        this.kind = 'webgl';
      } catch (error) {
        if (renderer === 'webgl') throw error;
      }
    }
    if (!this.keyer) {
      this.keyer = new CanvasKeyer(canvas);
      this.kind = 'canvas';
    }
    this.sampler = document.createElement('canvas').getContext('2d', { willReadFrequently: true });
    this.estimated = null;
    this.framesSinceEstimate = Infinity;
  }

  /**
   * Draw one frame of `video` keyed.
   * @param {HTMLVideoElement} video
   * @param {{key?: number[]|null, background?: number[]|null, params?: typeof DEFAULT_KEY}} options
   *   key null = estimate from the border; background null = transparent
   */
  draw(video, { key = null, background = null, params = DEFAULT_KEY } = {}) {
    const width = video.videoWidth;
    const height = video.videoHeight;
    if (!width || !height) return false;
    if (this.canvas.width !== width || this.canvas.height !== height) {
      this.canvas.width = width;
      this.canvas.height = height;
    }
    const keyRgb = key ?? this.borderColor(video, width, height, params);
    this.keyer.draw(video, width, height, keyRgb, background, params);
    return true;
  }

  /** The key colour estimated from the frame border, refreshed every `refreshFrames` frames. */
  borderColor(video, width, height, params) {
    if (this.estimated && this.framesSinceEstimate < params.refreshFrames) {
      this.framesSinceEstimate += 1;
      return this.estimated;
    }
    const sw = Math.min(width, params.sampleWidth);
    const sh = Math.max(1, Math.round((height * sw) / width));
    const canvas = this.sampler.canvas;
    if (canvas.width !== sw || canvas.height !== sh) {
      canvas.width = sw;
      canvas.height = sh;
    }
    this.sampler.drawImage(video, 0, 0, sw, sh);
    this.estimated = estimateKeyColor(this.sampler.getImageData(0, 0, sw, sh).data, sw, sh, params.border);
    this.framesSinceEstimate = 0;
    return this.estimated;
  }

  destroy() {
    this.keyer.destroy();
  }
}
