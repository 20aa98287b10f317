// The result beside the drawing: the shown image, the pending spinner, the error box, the
// history strip of request results and the PNG download.

const HISTORY_LIMIT = 24;

export class Results {
  /**
   * @param {{image: HTMLImageElement, empty: HTMLElement, caption: HTMLElement, spinner: HTMLElement,
   *          error: HTMLElement, history: HTMLOListElement, download: HTMLButtonElement}} els
   */
  constructor(els) {
    this.els = els;
    this.shown = null; // {url, name, caption, source: "request" | "stream"}
    this.entries = []; // history, newest first: {url, name, caption, item}
    this.streamUrl = null; // the latest live image (replaced, not kept)
    els.download.addEventListener('click', () => this.#download());
    this.#render();
  }

  /** Show the spinner while `count` requests are unanswered. */
  setPending(count) {
    this.els.spinner.hidden = count === 0;
    this.els.spinner.setAttribute('aria-label', count === 1 ? 'Generating' : `Generating ${count} images`);
  }

  /** A request's answer: shown and added to the history. */
  addResult(bytes, { id, caption }) {
    const entry = { url: pngUrl(bytes), name: `${id}.png`, caption, source: 'request' };
    entry.item = this.#historyItem(entry);
    this.entries.unshift(entry);
    this.els.history.prepend(entry.item);
    this.show(entry);
    this.#trimHistory();
  }

  /** A live-stream image: shown in place of the previous one, not kept in the history. */
  showStream(bytes) {
    const old = this.streamUrl;
    this.streamUrl = pngUrl(bytes);
    const stamp = new Date().toLocaleTimeString();
    this.show({ url: this.streamUrl, name: `live-${Date.now()}.png`, caption: `Live · ${stamp}`, source: 'stream' });
    if (old) URL.revokeObjectURL(old);
  }

  show(entry) {
    this.shown = entry;
    this.#render();
  }

  showError(text) {
    this.els.error.textContent = text;
    this.els.error.hidden = false;
  }

  clearError() {
    this.els.error.hidden = true;
    this.els.error.textContent = '';
  }

  #render() {
    const { image, empty, caption, download } = this.els;
    const entry = this.shown;
    image.hidden = !entry;
    empty.hidden = Boolean(entry);
    download.disabled = !entry;
    caption.textContent = entry?.caption ?? '';
    if (entry) {
      image.src = entry.url;
      image.dataset.source = entry.source;
    }
    for (const e of this.entries) e.item.querySelector('button').setAttribute('aria-pressed', String(e === entry));
  }

  #historyItem(entry) {
    const item = document.createElement('li');
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'thumb';
    button.setAttribute('aria-label', `Show result ${entry.caption}`);
    const img = document.createElement('img');
    img.src = entry.url;
    img.alt = '';
    button.append(img);
    button.addEventListener('click', () => this.show(entry));
    item.append(button);
    return item;
  }

  /** Keep the newest HISTORY_LIMIT entries (the shown one is the newest). */
  #trimHistory() {
    while (this.entries.length > HISTORY_LIMIT) {
      const old = this.entries.pop();
      old.item.remove();
      URL.revokeObjectURL(old.url);
    }
  }

  #download() {
    if (!this.shown) return;
    const link = document.createElement('a');
    link.href = this.shown.url;
    link.download = this.shown.name;
    link.click();
  }
}

function pngUrl(bytes) {
  return URL.createObjectURL(new Blob([bytes], { type: 'image/png' }));
}
