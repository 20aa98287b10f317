// Flood fill of an ImageData, tolerant to the soft edges that anti-aliased brushes leave.

/**
 * Fill the 4-connected region around (x, y) whose pixels are within `tolerance` (largest
 * difference over R, G, B, A) of the start pixel with the opaque colour `rgb`, then grow the
 * filled area by one pixel: that ring is the anti-aliased fringe between the region and its
 * neighbours, which would otherwise stay a blend of the old colours. Returns the number of
 * pixels changed (0 when (x, y) is outside the image).
 */
export function floodFill(image, x, y, rgb, tolerance) {
  const { width, height, data } = image;
  if (x < 0 || y < 0 || x >= width || y >= height) return 0;
  const start = (y * width + x) * 4;
  const seed = data.slice(start, start + 4);
  const inRegion = (p) => {
    const i = p * 4;
    return (
      Math.abs(data[i] - seed[0]) <= tolerance &&
      Math.abs(data[i + 1] - seed[1]) <= tolerance &&
      Math.abs(data[i + 2] - seed[2]) <= tolerance &&
      Math.abs(data[i + 3] - seed[3]) <= tolerance
    );
  };
  const filled = regionMask(width, height, y * width + x, inRegion);
  const mask = growByOne(filled, width, height);
  let changed = 0;
  for (let p = 0; p < mask.length; p++) {
    if (!mask[p]) continue;
    const i = p * 4;
    data[i] = rgb[0];
    data[i + 1] = rgb[1];
    data[i + 2] = rgb[2];
    data[i + 3] = 255;
    changed++;
  }
  return changed;
}

/** Mask of the 4-connected pixels around `start` for which `inRegion` holds (iterative). */
function regionMask(width, height, start, inRegion) {
  const mask = new Uint8Array(width * height);
  const stack = new Int32Array(width * height);
  let top = 0;
  stack[top++] = start;
  mask[start] = 1;
  while (top > 0) {
    const p = stack[--top];
    const x = p % width;
    const neighbours = [
      x > 0 ? p - 1 : -1,
      x < width - 1 ? p + 1 : -1,
      p >= width ? p - width : -1,
      p < width * (height - 1) ? p + width : -1,
    ];
    for (const q of neighbours) {
      if (q >= 0 && !mask[q] && inRegion(q)) {
        mask[q] = 1;
        stack[top++] = q;
      }
    }
  }
  return mask;
}

/** The mask plus its 4-neighbours. */
function growByOne(mask, width, height) {
  const grown = mask.slice();
  for (let p = 0; p < mask.length; p++) {
    if (!mask[p]) continue;
    const x = p % width;
    if (x > 0) grown[p - 1] = 1;
    if (x < width - 1) grown[p + 1] = 1;
    if (p >= width) grown[p - width] = 1;
    if (p < width * (height - 1)) grown[p + width] = 1;
  }
  return grown;
}
