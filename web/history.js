// Undo / redo of layer edits: each edit records the pixels of the layer it is about to change.

export class EditHistory {
  /** @param {{limit: number, onChange: () => void}} options */
  constructor({ limit, onChange }) {
    this.limit = limit;
    this.onChange = onChange;
    this.undoStack = [];
    this.redoStack = [];
  }

  get canUndo() {
    return this.undoStack.length > 0;
  }

  get canRedo() {
    return this.redoStack.length > 0;
  }

  /** Call before changing `layer`: keeps its current pixels; a new edit drops the redo steps. */
  record(layer) {
    this.undoStack.push({ layer, image: layer.snapshot() });
    if (this.undoStack.length > this.limit) this.undoStack.shift();
    this.redoStack = [];
    this.onChange();
  }

  /** Undo the last edit; returns the layer it changed, or null. */
  undo() {
    return this.#move(this.undoStack, this.redoStack);
  }

  /** Redo the last undone edit; returns the layer it changed, or null. */
  redo() {
    return this.#move(this.redoStack, this.undoStack);
  }

  clear() {
    this.undoStack = [];
    this.redoStack = [];
    this.onChange();
  }

  #move(from, to) {
    const step = from.pop();
    if (!step) return null;
    to.push({ layer: step.layer, image: step.layer.snapshot() });
    step.layer.restore(step.image);
    this.onChange();
    return step.layer;
  }
}
