// Requests on `P/request` and their answers (`P/image/<id>` or an error with the id).

const ANSWER_TIMEOUT_MS = 120_000; // a queued request on a slow board can take a while

/** A fresh request id: [A-Za-z0-9_-], well under the device's 128 characters. */
export function newRequestId() {
  const random = crypto.getRandomValues(new Uint32Array(2));
  return `tablet-${Date.now().toString(36)}-${random[0].toString(36)}${random[1].toString(36)}`;
}

/** Standard base64 of bytes, in chunks (String.fromCharCode's argument count is limited). */
export function toBase64(bytes) {
  const CHUNK = 0x8000;
  let binary = '';
  for (let i = 0; i < bytes.length; i += CHUNK) {
    binary += String.fromCharCode(...bytes.subarray(i, i + CHUNK));
  }
  return btoa(binary);
}

/**
 * `frames` of a request: every drawn layer bound to a modality of the device, as base64 PNG. A
 * blank layer (an empty sketch, a map all of its first class) is left out, so that a sketch alone
 * is a sketch-only request; with nothing drawn the map is sent as it is shown.
 */
export async function encodeFrames(layers) {
  const usable = [...layers].filter((layer) => layer.modality);
  const drawn = usable.filter((layer) => !layer.isBlank());
  // Nothing drawn at all: the map as shown (all the first class) is still a request.
  const chosen = drawn.length > 0 ? drawn : usable.filter((layer) => layer.kind === 'segmentation');
  const frames = {};
  for (const layer of chosen) frames[layer.modality] = toBase64(await layer.png());
  return frames;
}

export class Requests {
  /**
   * @param {{publish: (json: string) => Promise<void>,
   *          onPending: (count: number) => void,
   *          onImage: (bytes: Uint8Array, request: {id: string, params: object, ms: number}) => void,
   *          onFailure: (text: string, request: {id: string}) => void}} options
   */
  constructor({ publish, onPending, onImage, onFailure }) {
    this.publish = publish;
    this.onPending = onPending;
    this.onImage = onImage;
    this.onFailure = onFailure;
    this.pending = new Map(); // id -> {id, params, started, timer}
  }

  /** Publish a request; its answer arrives through `onImage` or `onFailure`. */
  async send(frames, params) {
    const id = newRequestId();
    const request = { id, params, started: performance.now() };
    request.timer = setTimeout(
      () => this.#fail(id, `no_answer: the device did not answer within ${ANSWER_TIMEOUT_MS / 1000} s`),
      ANSWER_TIMEOUT_MS,
    );
    this.pending.set(id, request);
    this.onPending(this.pending.size);
    try {
      await this.publish(JSON.stringify({ id, frames, ...params }));
    } catch (error) {
      this.#fail(id, `The request was not sent: ${error.message}`);
    }
  }

  /**
   * `P/image/<id>`. Ids this page is not waiting for are ignored: other clients' requests, and
   * QoS 1 duplicates of an answer already shown.
   */
  handleImage(id, bytes) {
    const request = this.#settle(id);
    if (request) this.onImage(bytes, { id, params: request.params, ms: Math.round(performance.now() - request.started) });
  }

  /** An error from `P/error` with an id (ignored unless it answers one of this page's requests). */
  handleError({ id, code, message }) {
    this.#fail(id, `${code}: ${message}`);
  }

  #fail(id, text) {
    const request = this.#settle(id);
    if (request) this.onFailure(text, request);
  }

  /** Remove a pending request; returns it, or undefined when it is not (or no longer) pending. */
  #settle(id) {
    const request = this.pending.get(id);
    if (!request) return undefined;
    clearTimeout(request.timer);
    this.pending.delete(id);
    this.onPending(this.pending.size);
    return request;
  }
}
