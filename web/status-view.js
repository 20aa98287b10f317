// The header badges: the broker connection and the device's retained status.

const BROKER_TEXT = {
  connecting: 'connecting',
  connected: 'connected',
  reconnecting: 'reconnecting',
  offline: 'disconnected',
  error: 'error',
  auth: 'login needed',
};

/** @param {{badge: HTMLElement, detail: HTMLElement}} els */
export function showBroker(els, state, detail = '') {
  els.badge.textContent = BROKER_TEXT[state] ?? state;
  els.badge.dataset.state = state;
  els.detail.textContent = detail;
}

/**
 * @param {{state: HTMLElement, queue: HTMLElement, latency: HTMLElement, counts: HTMLElement, model: HTMLElement}} els
 * @param {object} status  the retained `P/status` (the last will carries only `state`)
 */
export function showDevice(els, status) {
  const state = ['online', 'busy', 'offline'].includes(status.state) ? status.state : 'unknown';
  els.state.textContent = state;
  els.state.dataset.state = state;
  if (state === 'offline') return; // the last will: keep the last figures the device published
  els.queue.textContent = `queue ${status.queue_depth ?? '–'}/${status.queue_capacity ?? '–'}`;
  els.latency.textContent = status.last_latency_ms == null ? 'latency –' : `latency ${status.last_latency_ms} ms`;
  els.counts.textContent = `${status.images_generated ?? 0} images · ${status.errors ?? 0} errors`;
  if (status.model) els.model.textContent = `model ${status.model.id} · ${status.model.image_size}px`;
}
