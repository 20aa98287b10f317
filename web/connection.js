// The MQTT connection to the broker (MQTT.js, loaded by index.html as the global `mqtt`).
//
// States reported to `onState(state, detail)`: "connecting", "connected", "reconnecting",
// "offline", "error" (with a message) and "auth" (the broker refused the credentials: the page
// stops retrying until the user connects again).

const MAX_PACKET_BYTES = 16 * 1024 * 1024; // the device's own default limit: images fit easily
const RECONNECT_MS = 2000;
const AUTH_REFUSED = new Set([4, 5, 134, 135]); // bad user name or password / not authorised

/** Topics of the device under `prefix` (which ends with '/'). */
export function deviceTopics(prefix) {
  return {
    status: `${prefix}status`,
    request: `${prefix}request`,
    error: `${prefix}error`,
    streamImage: `${prefix}image`,
    requestImagePrefix: `${prefix}image/`, // + request id
    framePrefix: `${prefix}frame/`, // + modality
    subscriptions: [`${prefix}status`, `${prefix}image`, `${prefix}image/+`, `${prefix}error`],
  };
}

export class Connection {
  /**
   * @param {{url: string, protocol: number, subscriptions: string[],
   *          onState: (state: string, detail?: string) => void,
   *          onMessage: (topic: string, payload: Uint8Array) => void}} options
   */
  constructor({ url, protocol, subscriptions, onState, onMessage }) {
    this.url = url;
    this.protocol = protocol;
    this.subscriptions = subscriptions;
    this.onState = onState;
    this.onMessage = onMessage;
    this.client = null;
  }

  get connected() {
    return this.client?.connected ?? false;
  }

  /** (Re)connect, with credentials when `username` is not empty. */
  connect({ username = '', password = '' } = {}) {
    this.client?.end(true);
    this.onState('connecting');
    const client = mqtt.connect(this.url, {
      protocolVersion: this.protocol,
      clientId: `mcm-tablet-${randomHex(8)}`,
      clean: true,
      keepalive: 30,
      reconnectPeriod: RECONNECT_MS,
      connectTimeout: 10_000,
      username: username || undefined,
      password: username ? password : undefined,
      // MQTT.js checks incoming packets against this (and MQTT 5 announces it in CONNECT).
      properties: { maximumPacketSize: MAX_PACKET_BYTES },
    });
    // A client replaced by a newer connect() may still emit while it closes: ignore it.
    const current = (handler) => (...args) => client === this.client && handler(...args);
    client.on('connect', current(() => this.#subscribe(client)));
    client.on('reconnect', current(() => this.onState('reconnecting')));
    client.on('offline', current(() => this.onState('offline')));
    client.on('error', current((error) => this.#failed(client, error)));
    client.on('message', current((topic, payload) => this.onMessage(topic, payload)));
    this.client = client;
  }

  /** Publish; resolves when the broker has it (QoS 1) or it is written (QoS 0). */
  publish(topic, payload, qos = 0) {
    return new Promise((resolve, reject) => {
      if (!this.connected) {
        reject(new Error('not connected to the broker'));
        return;
      }
      this.client.publish(topic, payload, { qos }, (error) => (error ? reject(error) : resolve()));
    });
  }

  #subscribe(client) {
    client.subscribe(this.subscriptions, { qos: 1 }, (error) => {
      if (client !== this.client) return;
      if (error) this.onState('error', `subscribe: ${error.message}`);
      else this.onState('connected');
    });
  }

  #failed(client, error) {
    if (AUTH_REFUSED.has(error.code)) {
      client.end(true); // retrying with the same credentials cannot succeed
      this.onState('auth', error.message);
    } else {
      this.onState('error', error.message);
    }
  }
}

function randomHex(bytes) {
  const values = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(values, (v) => v.toString(16).padStart(2, '0')).join('');
}
