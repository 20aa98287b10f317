// Where the page finds the broker and the device's topics.
//
// The device serves `config.json` beside the page. For development a query string overrides it:
// `?broker=ws://127.0.0.1:9001/mqtt&prefix=mcm/edge-1/` (config.json is not fetched when both are
// given).

/** A topic prefix always ends with one '/' (the device adds a missing one too). */
function normalizePrefix(prefix) {
  return prefix.endsWith('/') ? prefix : `${prefix}/`;
}

/** The broker URL when config.json names none: the page's own host, ws or wss like the page. */
function defaultBrokerUrl(location, port, path) {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const slashPath = path.startsWith('/') ? path : `/${path}`;
  return `${scheme}://${location.hostname}:${port}${slashPath}`;
}

/** `{deviceId, prefix, brokerUrl, protocol}` for this page. */
export async function loadConfig(location, fetchJson = fetchConfigJson) {
  const query = new URLSearchParams(location.search);
  const broker = query.get('broker');
  const prefix = query.get('prefix');
  if (broker && prefix) {
    const p = normalizePrefix(prefix);
    return { deviceId: deviceFromPrefix(p), prefix: p, brokerUrl: broker, protocol: 4 };
  }
  const json = await fetchJson();
  const b = json.broker ?? {};
  const p = normalizePrefix(prefix ?? json.topic_prefix ?? `mcm/${json.device_id}/`);
  return {
    deviceId: json.device_id ?? deviceFromPrefix(p),
    prefix: p,
    brokerUrl: broker ?? b.url ?? defaultBrokerUrl(location, b.port ?? 9001, b.path ?? '/mqtt'),
    protocol: json.mqtt_protocol === 5 ? 5 : 4,
  };
}

async function fetchConfigJson() {
  const response = await fetch('config.json', { cache: 'no-store' });
  if (!response.ok) throw new Error(`config.json: HTTP ${response.status}`);
  return response.json();
}

/** `mcm/edge-1/` -> `edge-1`: the last non-empty level, for the page title. */
function deviceFromPrefix(prefix) {
  const levels = prefix.split('/').filter(Boolean);
  return levels.at(-1) ?? prefix;
}
