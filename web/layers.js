// The two drawing layers: a segmentation map (opaque, class colours) and a sketch (transparent
// background, opaque dark strokes) drawn over it. Both keep the fixed working resolution of their
// canvas element; the PNGs sent to the device have that resolution (the device resizes).

import { floodFill } from './flood.js';

export const SKETCH_INK = [24, 24, 28];
const FILL_TOLERANCE = 48; // per channel: a region painted with one class, soft edges included

export class Layer {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {{kind: "segmentation" | "sketch", modality: string | null}} options
   *   `modality`: the device's name of the layer's modality (frame topic and request key); null
   *   until the status names one (the layer is then neither drawn on nor sent).
   */
  constructor(canvas, { kind, modality }) {
    this.canvas = canvas;
    this.kind = kind;
    this.modality = modality;
    this.ctx = canvas.getContext('2d', { willReadFrequently: true });
    this.background = null; // [r, g, b] for the segmentation layer (its first class), else null
  }

  get width() {
    return this.canvas.width;
  }

  get height() {
    return this.canvas.height;
  }

  /** Fill the layer with its background (the first class), or clear it to transparent. */
  reset() {
    const { ctx } = this;
    ctx.save();
    ctx.globalCompositeOperation = 'source-over';
    ctx.clearRect(0, 0, this.width, this.height);
    if (this.background) {
      ctx.fillStyle = cssColour(this.background);
      ctx.fillRect(0, 0, this.width, this.height);
    }
    ctx.restore();
  }

  /**
   * A round brush segment from (x0, y0) to (x1, y1) (equal points: a dot). `colour` null erases:
   * back to the background colour on the map, to transparent on the sketch.
   */
  stroke(x0, y0, x1, y1, width, colour) {
    const { ctx } = this;
    ctx.save();
    this.#usePaint(colour);
    if (x0 === x1 && y0 === y1) {
      ctx.beginPath();
      ctx.arc(x0, y0, width / 2, 0, Math.PI * 2);
      ctx.fill();
    } else {
      ctx.lineWidth = width;
      ctx.lineCap = 'round';
      ctx.lineJoin = 'round';
      ctx.beginPath();
      ctx.moveTo(x0, y0);
      ctx.lineTo(x1, y1);
      ctx.stroke();
    }
    ctx.restore();
  }

  /** Flood fill of the region around (x, y) with `colour`. */
  fill(x, y, colour) {
    const image = this.snapshot();
    if (floodFill(image, Math.floor(x), Math.floor(y), colour, FILL_TOLERANCE) > 0) this.restore(image);
  }

  snapshot() {
    return this.ctx.getImageData(0, 0, this.width, this.height);
  }

  restore(image) {
    this.ctx.putImageData(image, 0, 0);
  }

  /**
   * True when nothing is drawn: a sketch without any opaque pixel, a map that is all its
   * background class (e.g. fresh or cleared: "no map", not "all sky").
   */
  isBlank() {
    const { data } = this.snapshot();
    const bg = this.background;
    for (let i = 0; i < data.length; i += 4) {
      const drawn = bg ? data[i] !== bg[0] || data[i + 1] !== bg[1] || data[i + 2] !== bg[2] : data[i + 3] !== 0;
      if (drawn) return false;
    }
    return true;
  }

  /** The layer as PNG bytes (transparency kept). */
  async png() {
    const blob = await new Promise((resolve, reject) =>
      this.canvas.toBlob((b) => (b ? resolve(b) : reject(new Error('PNG encoding failed'))), 'image/png'),
    );
    return new Uint8Array(await blob.arrayBuffer());
  }

  #usePaint(colour) {
    const { ctx } = this;
    if (colour === null && !this.background) {
      ctx.globalCompositeOperation = 'destination-out';
      ctx.fillStyle = ctx.strokeStyle = 'rgb(0 0 0)';
      return;
    }
    const css = cssColour(colour ?? this.background);
    ctx.globalCompositeOperation = 'source-over';
    ctx.fillStyle = ctx.strokeStyle = css;
  }
}

export function cssColour([r, g, b]) {
  return `rgb(${r} ${g} ${b})`;
}
