// Live mode: the raw PNG of a layer goes to `P/frame/<modality>` while the user paints, at most
// once per layer every INTERVAL_MS and only when it changed, plus once at the end of each edit.
// The device answers on `P/image`.

const INTERVAL_MS = 400;

export class LiveStream {
  /** @param {{publish: (modality: string, png: Uint8Array) => Promise<void>, onError: (text: string) => void}} options */
  constructor({ publish, onError }) {
    this.publish = publish;
    this.onError = onError;
    this.enabled = false;
    this.channels = new Map(); // layer -> {dirty, final, sending, lastSent, timer}
  }

  /** Turning it on sends every layer at once, so that the device has all maps. */
  setEnabled(enabled, layers) {
    this.enabled = enabled;
    for (const channel of this.channels.values()) {
      clearTimeout(channel.timer);
      channel.dirty = false;
    }
    if (!enabled) return;
    for (const layer of layers) this.changed(layer, true);
  }

  /** A layer changed; `final`: the edit is complete (pointer up), send without waiting. */
  changed(layer, final) {
    if (!this.enabled || !layer.modality) return;
    const channel = this.#channel(layer);
    channel.dirty = true;
    channel.final ||= final;
    if (!channel.sending) this.#schedule(layer, channel);
  }

  #channel(layer) {
    let channel = this.channels.get(layer);
    if (!channel) {
      channel = { dirty: false, final: false, sending: false, lastSent: -Infinity, timer: 0 };
      this.channels.set(layer, channel);
    }
    return channel;
  }

  #schedule(layer, channel) {
    clearTimeout(channel.timer);
    const wait = channel.final ? 0 : channel.lastSent + INTERVAL_MS - performance.now();
    if (wait <= 0) this.#send(layer, channel);
    else channel.timer = setTimeout(() => this.#send(layer, channel), wait);
  }

  /**
   * One publish at a time per layer. The interval runs from the end of the last publish, so
   * that a slow PNG encode cannot bunch two frames together on the wire.
   */
  async #send(layer, channel) {
    if (!this.enabled || !channel.dirty) return;
    channel.sending = true;
    channel.dirty = false;
    channel.final = false;
    try {
      await this.publish(layer.modality, await layer.png());
    } catch (error) {
      this.onError(`Live frame not sent: ${error.message}`);
    } finally {
      channel.sending = false;
      channel.lastSent = performance.now();
    }
    if (channel.dirty) this.#schedule(layer, channel); // changed while this one was on its way
  }
}
