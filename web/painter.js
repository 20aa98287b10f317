// Pointer input (mouse, touch, pen) on the canvas stack -> brush strokes and fills on the active
// layer. Every edit is recorded in the history first and reported to `onEdit(layer, final)`;
// `final` marks the end of an edit (pointer up, a fill), when a live stream sends at once.

import { SKETCH_INK } from './layers.js';

const PEN_ERASER_BUTTON = 5; // the eraser end of a pen (Pointer Events)

export class Painter {
  /**
   * @param {HTMLElement} stage  element holding the layer canvases (receives the pointer events)
   * @param {{layers: Map<string, import('./layers.js').Layer>, history: import('./history.js').EditHistory,
   *          onEdit: (layer: import('./layers.js').Layer, final: boolean) => void}} options
   */
  constructor(stage, { layers, history, onEdit }) {
    this.stage = stage;
    this.layers = layers;
    this.history = history;
    this.onEdit = onEdit;
    this.layerKind = 'segmentation';
    this.tool = 'brush';
    this.size = 24;
    this.classColour = null; // the selected class of the segmentation layer
    this.stroke = null; // {pointerId, layer, x, y, erase} while a stroke is in progress
    stage.addEventListener('pointerdown', (e) => this.#down(e));
    stage.addEventListener('pointermove', (e) => this.#move(e));
    stage.addEventListener('pointerup', (e) => this.#up(e));
    stage.addEventListener('pointercancel', (e) => this.#up(e));
  }

  get activeLayer() {
    return this.layers.get(this.layerKind);
  }

  /** The colour the active tool puts down on `layer`; null erases. */
  #paint(layer, erase) {
    if (erase) return null;
    return layer.kind === 'segmentation' ? this.classColour : SKETCH_INK;
  }

  #down(e) {
    const layer = this.activeLayer;
    const button = e.button === 0 || e.button === PEN_ERASER_BUTTON; // not a right or middle click
    if (!e.isPrimary || !button || this.stroke || !layer.modality) return; // no status yet
    if (layer.kind === 'segmentation' && !this.classColour) return; // a model without classes
    e.preventDefault();
    const { x, y } = this.#position(e, layer);
    const erase = this.tool === 'eraser' || e.button === PEN_ERASER_BUTTON;
    if (this.tool === 'fill' && !erase) {
      this.history.record(layer);
      layer.fill(x, y, this.#paint(layer, false));
      this.onEdit(layer, true);
      return;
    }
    this.stage.setPointerCapture(e.pointerId);
    this.history.record(layer);
    this.stroke = { pointerId: e.pointerId, layer, x, y, erase };
    layer.stroke(x, y, x, y, this.#width(e), this.#paint(layer, erase));
    this.onEdit(layer, false);
  }

  #move(e) {
    const { stroke } = this;
    if (!stroke || e.pointerId !== stroke.pointerId) return;
    // Coalesced events: the intermediate positions the browser merged into this one.
    const events = e.getCoalescedEvents?.() ?? [];
    for (const event of events.length > 0 ? events : [e]) {
      const { x, y } = this.#position(event, stroke.layer);
      stroke.layer.stroke(stroke.x, stroke.y, x, y, this.#width(event), this.#paint(stroke.layer, stroke.erase));
      stroke.x = x;
      stroke.y = y;
    }
    this.onEdit(stroke.layer, false);
  }

  #up(e) {
    const { stroke } = this;
    if (!stroke || e.pointerId !== stroke.pointerId) return;
    this.stroke = null;
    this.onEdit(stroke.layer, true);
  }

  /** Pointer position in the layer's working pixels (the canvas is displayed scaled). */
  #position(e, layer) {
    const rect = layer.canvas.getBoundingClientRect();
    return {
      x: ((e.clientX - rect.left) * layer.width) / rect.width,
      y: ((e.clientY - rect.top) * layer.height) / rect.height,
    };
  }

  /** Brush width in working pixels; a pen's pressure scales it (0.5, the neutral value, = 1x). */
  #width(e) {
    if (e.pointerType !== 'pen' || !(e.pressure > 0)) return this.size;
    return this.size * Math.min(1.75, 0.25 + 1.5 * e.pressure);
  }
}
