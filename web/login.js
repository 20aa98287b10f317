// Optional broker credentials: typed by the user, kept at most in this tab's sessionStorage
// (never in config.json, never in localStorage).

const STORAGE_KEY = 'mcm-edge.broker-login';

export class Login {
  /**
   * @param {{panel: HTMLDetailsElement, form: HTMLFormElement, username: HTMLInputElement, password: HTMLInputElement}} els
   * @param {(credentials: {username: string, password: string}) => void} connect
   */
  constructor(els, connect) {
    this.els = els;
    const saved = readSaved();
    if (saved) {
      els.username.value = saved.username;
      els.password.value = saved.password;
    }
    els.form.addEventListener('submit', (e) => {
      e.preventDefault();
      connect(this.credentials());
    });
  }

  credentials() {
    return { username: this.els.username.value.trim(), password: this.els.password.value };
  }

  /** The broker accepted the connection: remember non-empty credentials for reloads of this tab. */
  accepted() {
    const credentials = this.credentials();
    if (credentials.username) sessionStorage.setItem(STORAGE_KEY, JSON.stringify(credentials));
  }

  /** The broker refused them: forget them and ask. */
  refused() {
    sessionStorage.removeItem(STORAGE_KEY);
    this.els.panel.open = true;
    this.els.username.focus();
  }
}

function readSaved() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(STORAGE_KEY));
    return typeof saved?.username === 'string' && typeof saved?.password === 'string' ? saved : null;
  } catch {
    return null;
  }
}
