// The tablet page: wires the drawing, the MQTT connection, the requests, the live stream and the
// views together. Each part lives in its own module; this one only connects them.

import { loadConfig } from './config.js';
import { Connection, deviceTopics } from './connection.js';
import { EditHistory } from './history.js';
import { Layer } from './layers.js';
import { LiveStream } from './live.js';
import { Login } from './login.js';
import { Painter } from './painter.js';
import { describeModalities, renderSwatches } from './palette.js';
import { GenerationParams } from './params.js';
import { Requests, encodeFrames } from './requests.js';
import { Results } from './results.js';
import { showBroker, showDevice } from './status-view.js';

const UNDO_STEPS = 50;
const $ = (id) => document.getElementById(id);

const layers = new Map([
  ['segmentation', new Layer($('layer-segmentation'), { kind: 'segmentation', modality: null })],
  ['sketch', new Layer($('layer-sketch'), { kind: 'sketch', modality: null })],
]);
const results = new Results({
  image: $('result-image'),
  empty: $('result-empty'),
  caption: $('result-caption'),
  spinner: $('spinner'),
  error: $('error'),
  history: $('history'),
  download: $('download'),
});
const params = new GenerationParams({
  seed: $('seed'),
  randomSeed: $('random-seed'),
  stepsSelect: $('steps-select'),
  stepsInput: $('steps-input'),
  strength: $('strength'),
  strengthValue: $('strength-value'),
  prompt: $('prompt'),
  promptRow: $('prompt-row'),
  guidance: $('guidance'),
  guidanceRow: $('guidance-row'),
});
const edits = new EditHistory({ limit: UNDO_STEPS, onChange: showUndoState });
const live = new LiveStream({ publish: publishFrame, onError: (text) => results.showError(text) });
const painter = new Painter($('stage'), { layers, history: edits, onEdit: (layer, final) => live.changed(layer, final) });
const brokerEls = { badge: $('broker-state'), detail: $('broker-detail') };
const deviceEls = { state: $('device-state'), queue: $('device-queue'), latency: $('device-latency'), counts: $('device-counts'), model: $('device-model') };

let topics = null;
let connection = null;
let requests = null;
let login = null;
let classes = []; // of the segmentation modality, from the status
let classesKey = null; // the palette the segmentation layer was filled for
let selectSwatch = () => {};

bindControls();
start().catch((error) => showBroker(brokerEls, 'error', error.message));

async function start() {
  const config = await loadConfig(window.location);
  topics = deviceTopics(config.prefix);
  $('device-id').textContent = config.deviceId;
  $('broker-url').textContent = config.brokerUrl;
  document.title = `mcm-edge ${config.deviceId}`;
  requests = new Requests({
    publish: (json) => connection.publish(topics.request, json, 1),
    onPending: (count) => results.setPending(count),
    onImage: showRequestImage,
    onFailure: (text) => results.showError(`Request failed: ${text}`),
  });
  connection = new Connection({
    url: config.brokerUrl,
    protocol: config.protocol,
    subscriptions: topics.subscriptions,
    onState: brokerStateChanged,
    onMessage,
  });
  login = new Login(
    { panel: $('broker-panel'), form: $('login'), username: $('username'), password: $('password') },
    (credentials) => connection.connect(credentials),
  );
  // Credentials are optional: with none typed or saved the page connects anonymously.
  connection.connect(login.credentials());
}

function brokerStateChanged(state, detail) {
  showBroker(brokerEls, state, detail);
  if (state === 'connected') login.accepted();
  if (state === 'auth') login.refused();
  updateGenerate();
}

function onMessage(topic, payload) {
  if (topic === topics.status) {
    const status = parseJson(payload, topic);
    if (status) statusChanged(status);
  } else if (topic === topics.error) {
    const error = parseJson(payload, topic);
    if (error) deviceError(error);
  } else if (topic === topics.streamImage) {
    if (live.enabled) {
      results.clearError();
      results.showStream(payload);
    }
  } else if (topic.startsWith(topics.requestImagePrefix)) {
    requests.handleImage(topic.slice(topics.requestImagePrefix.length), payload);
  }
}

function statusChanged(status) {
  showDevice(deviceEls, status);
  if (Array.isArray(status.modalities)) bindModalities(status.modalities);
  // The last will (`{"state":"offline"}`) has no generation block: keep what we had.
  if (status.state !== 'offline') params.apply(status.generation);
  updateGenerate();
}

/** Errors with an id answer a request (ours or another client's); without one, the stream's. */
function deviceError(error) {
  if (error.id == null) results.showError(`Device error: ${error.code}: ${error.message}`);
  else requests.handleError(error);
}

/** Bind the layers to the device's modalities; a new palette resets the segmentation layer. */
function bindModalities(modalities) {
  for (const layer of layers.values()) {
    layer.modality = modalities.find((m) => m.kind === layer.kind)?.name ?? null;
    const radio = document.querySelector(`input[name=layer][value=${layer.kind}]`);
    radio.disabled = !layer.modality;
  }
  $('modalities').textContent = describeModalities(modalities);
  const segmentation = modalities.find((m) => m.kind === 'segmentation');
  const key = JSON.stringify(segmentation?.classes ?? []);
  if (key !== classesKey) {
    classesKey = key;
    useClasses(segmentation?.classes ?? []);
  }
  if (!painter.activeLayer.modality) {
    const other = [...layers.values()].find((l) => l.modality);
    if (other) setLayer(other.kind);
  }
}

/** The map starts filled with the first class (also what its eraser paints back). */
function useClasses(newClasses) {
  classes = newClasses;
  const layer = layers.get('segmentation');
  layer.background = classes[0]?.color ?? null;
  layer.reset();
  edits.clear();
  selectSwatch = renderSwatches($('palette'), classes, (index) => pickClass(index, true));
  painter.classColour = null;
  if (classes.length > 0) pickClass(0, false);
}

function pickClass(index, switchLayer) {
  painter.classColour = classes[index].color;
  selectSwatch(index);
  if (switchLayer) setLayer('segmentation');
}

function showRequestImage(bytes, { id, params: sent, ms }) {
  results.clearError();
  const seed = sent.seed ?? 'device';
  const prompt = sent.prompt ? ` · “${sent.prompt}”` : '';
  results.addResult(bytes, { id, caption: `seed ${seed} · ${sent.steps} steps · strength ${sent.strength}${prompt} · ${ms} ms` });
}

async function generate() {
  results.clearError();
  const frames = await encodeFrames(layers.values());
  const values = params.values();
  if (Object.keys(frames).length === 0 && !values.prompt) {
    results.showError('Nothing to send: the device takes no layer that has a drawing.');
    return;
  }
  await requests.send(frames, values);
}

function publishFrame(modality, png) {
  return connection.publish(topics.framePrefix + modality, png, 0);
}

function undo() {
  const layer = edits.undo();
  if (layer) live.changed(layer, true);
}

function redo() {
  const layer = edits.redo();
  if (layer) live.changed(layer, true);
}

function clearLayer() {
  const layer = painter.activeLayer;
  if (!layer.modality) return;
  edits.record(layer);
  layer.reset();
  live.changed(layer, true);
}

function setLayer(kind) {
  painter.layerKind = kind;
  document.querySelector(`input[name=layer][value=${kind}]`).checked = true;
}

function showUndoState() {
  $('undo').disabled = !edits.canUndo;
  $('redo').disabled = !edits.canRedo;
}

function updateGenerate() {
  const ready = connection?.connected && [...layers.values()].some((l) => l.modality);
  $('generate').disabled = !ready;
}

function bindControls() {
  for (const radio of document.querySelectorAll('input[name=layer]')) {
    radio.addEventListener('change', () => setLayer(radio.value));
  }
  for (const radio of document.querySelectorAll('input[name=tool]')) {
    radio.addEventListener('change', () => {
      painter.tool = radio.value;
      $('stage').dataset.tool = radio.value;
    });
  }
  const size = $('brush-size');
  size.addEventListener('input', () => {
    painter.size = Number(size.value);
    $('brush-size-value').value = size.value;
  });
  painter.size = Number(size.value);
  $('undo').addEventListener('click', undo);
  $('redo').addEventListener('click', redo);
  $('clear').addEventListener('click', clearLayer);
  $('generate').addEventListener('click', () => generate().catch((e) => results.showError(e.message)));
  $('live').addEventListener('change', (e) => live.setEnabled(e.target.checked, layers.values()));
  document.addEventListener('keydown', shortcut);
  setLayer(painter.layerKind);
  showUndoState();
}

/** Ctrl+Z undo, Ctrl+Shift+Z / Ctrl+Y redo (Cmd on a Mac); text fields keep their own. */
function shortcut(e) {
  if (!(e.ctrlKey || e.metaKey) || e.altKey) return;
  if (e.target.matches?.('input[type=text], input[type=number], input[type=password], input:not([type]), textarea')) return;
  const key = e.key.toLowerCase();
  if (key === 'z' && !e.shiftKey) undo();
  else if (key === 'z' || key === 'y') redo();
  else return;
  e.preventDefault();
}

function parseJson(payload, topic) {
  try {
    return JSON.parse(new TextDecoder().decode(payload));
  } catch {
    console.warn(`${topic}: not JSON, ignored`);
    return null;
  }
}
