// The class swatches of the segmentation layer and the list of the device's modalities, both
// from the retained status (never hard-coded: another model has other classes).

import { cssColour } from './layers.js';

/** Kinds the page can draw; the others (dense maps such as depth) are listed as not available. */
const DRAWABLE_KINDS = new Set(['segmentation', 'sketch']);

/**
 * One button per class (name and colour from the status) in `container`; `onPick(index)` when
 * one is pressed. Returns `select(index)`, which marks the selected swatch.
 */
export function renderSwatches(container, classes, onPick) {
  const buttons = classes.map((cls, index) => {
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'swatch';
    button.setAttribute('aria-pressed', 'false');
    button.title = `${cls.name} (rgb ${cls.color.join(', ')})`;
    const chip = document.createElement('span');
    chip.className = 'swatch-chip';
    chip.style.backgroundColor = cssColour(cls.color);
    const label = document.createElement('span');
    label.className = 'swatch-name';
    label.textContent = cls.name;
    button.append(chip, label);
    button.addEventListener('click', () => onPick(index));
    return button;
  });
  container.replaceChildren(...buttons);
  return (selected) =>
    buttons.forEach((b, index) => b.setAttribute('aria-pressed', String(index === selected)));
}

/** "segmentation, sketch; depth (dense): not available for drawing". */
export function describeModalities(modalities) {
  const drawable = modalities.filter((m) => DRAWABLE_KINDS.has(m.kind)).map((m) => m.name);
  const other = modalities.filter((m) => !DRAWABLE_KINDS.has(m.kind)).map((m) => `${m.name} (${m.kind})`);
  const parts = [`Drawing: ${drawable.join(', ') || 'none'}`];
  if (other.length > 0) parts.push(`not available here: ${other.join(', ')}`);
  return parts.join(' · ');
}
