// The playground: one krt WebSocket, its audio played through an AudioWorklet as it
// arrives, its words lit as they are heard. Plain JavaScript, nothing fetched but from
// this server. window.playground holds what the page measured, for people and tests.

const $ = (id) => document.getElementById(id);
const WS_PATH = "/v1/audio/speech/stream/ws";
const KEY_STORE = "krt-playground-key"; // sessionStorage: this tab only, never the server's

const figures = { responses: {}, events: [], order: [] };
// The decoder too, so a test can hold it to FFmpeg's (figures holds only numbers besides).
Object.defineProperty(figures, "decode", { value: (bytes, format) => Array.from(decodeBytes(Uint8Array.from(bytes), format)) });
window.playground = figures;

let socket = null;
let socketKey = null;
let socketSerial = 0; // the latest socket's: a close ends only its own socket's responses
let sessionReady = null; // a promise of the session.updated for the settings below
let sessionWaiter = null; // its resolve and reject
let sessionSettings = "";
let audio = null; // {context, player, rate}
let sequence = 0;
let speaking = Promise.resolve(); // Speaks run one after another: one socket, one context

function setStatus(text, kind = "") {
  const status = $("status");
  status.textContent = text;
  status.className = kind;
}

function settings() {
  return {
    voice: $("voice").value,
    speed: Number($("speed").value),
    format: $("format").value,
    rate: Number($("rate").value),
  };
}

// ---- voices --------------------------------------------------------------------------

async function loadVoices() {
  let body = null;
  try {
    const answer = await fetch("/readyz", { cache: "no-store" });
    body = await answer.json();
  } catch (error) {
    setStatus("The server did not answer /readyz.", "error");
    return;
  }
  if (!body.voices) {
    setStatus("The model is still loading…");
    setTimeout(loadVoices, 1000);
    return;
  }
  const select = $("voice");
  const chosen = select.value;
  select.replaceChildren();
  const names = ["female", "male", ...body.voices.all];
  for (const name of names) {
    const option = document.createElement("option");
    option.value = name;
    option.textContent =
      name === "female" ? `female (${body.voices.female})`
      : name === "male" ? `male (${body.voices.male})` : name;
    select.append(option);
  }
  if (names.includes(chosen)) select.value = chosen;
  $("engine").textContent = `${body.backend} on ${body.device}`;
  if (!body.ready) setStatus("The server is draining; it will not take new speech.", "error");
}

// ---- audio ---------------------------------------------------------------------------

async function ensureAudio(rate) {
  if (audio && audio.rate === rate) {
    await audio.context.resume();
    return audio;
  }
  if (audio) await audio.context.close();
  const context = new AudioContext({ sampleRate: rate, latencyHint: "interactive" });
  await context.audioWorklet.addModule("/playground/pcm-player.js");
  const player = new AudioWorkletNode(context, "pcm-player", { outputChannelCount: [1] });
  player.port.onmessage = (event) => heard(event.data);
  player.connect(context.destination);
  await context.resume();
  audio = { context, player, rate };
  figures.rate = rate;
  return audio;
}

const MULAW = new Float32Array(256);
const ALAW = new Float32Array(256);
for (let byte = 0; byte < 256; byte++) {
  // G.711, as ITU-T writes it: each byte expands to a 13/14-bit linear sample.
  const u = ~byte & 0xff;
  const magnitude = (((u & 0x0f) << 3) + 0x84) << ((u & 0x70) >> 4);
  MULAW[byte] = ((u & 0x80) ? 0x84 - magnitude : magnitude - 0x84) / 32768;
  const a = byte ^ 0x55;
  const segment = (a & 0x70) >> 4;
  let value = (a & 0x0f) << 4;
  value = segment === 0 ? value + 8 : (value + 0x108) << (segment - 1);
  ALAW[byte] = ((a & 0x80) ? value : -value) / 32768;
}

function decode(base64, format) {
  return decodeBytes(Uint8Array.from(atob(base64), (char) => char.charCodeAt(0)), format);
}

function decodeBytes(bytes, format) {
  if (format === "pcm") {
    const view = new DataView(bytes.buffer);
    const samples = new Float32Array(bytes.length >> 1);
    for (let k = 0; k < samples.length; k++) samples[k] = view.getInt16(2 * k, true) / 32768;
    return samples;
  }
  const table = format === "mulaw" ? MULAW : ALAW;
  return Float32Array.from(bytes, (byte) => table[byte]);
}

// ---- the socket ----------------------------------------------------------------------

function socketUrl(key) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const query = key ? `?api_key=${encodeURIComponent(key)}` : "";
  return `${scheme}://${location.host}${WS_PATH}${query}`;
}

function openSocket(key) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(socketUrl(key));
    const serial = ++socketSerial;
    let opened = false;
    ws.onopen = () => { opened = true; resolve(ws); };
    ws.onmessage = (event) => received(JSON.parse(event.data));
    ws.onclose = (event) => {
      const current = socket === ws;
      if (current) {
        socket = null;
        sessionSettings = "";
        sessionWaiter?.reject(new Error("The connection closed before the session was set up."));
      }
      if (!opened) reject(new Error("refused"));
      else closed(event, serial, current);
    };
  });
}

async function refusal(key) {
  // A browser hides why a WebSocket upgrade failed; the same key on a plain request says.
  try {
    const answer = await fetch("/v1/audio/voices", {
      headers: key ? { Authorization: `Bearer ${key}` } : {},
    });
    if (answer.status === 401) {
      return key
        ? "The server refused this API key. Enter the API_KEY the server was started with."
        : "This server needs an API key: enter the API_KEY it was started with above.";
    }
    if (answer.status === 503) return "The server is loading or draining; try again in a moment.";
  } catch (error) { /* unreachable: the message below */ }
  return "Could not open a WebSocket to the server.";
}

function closed(event, serial, current) {
  for (const id of figures.order) {
    const response = figures.responses[id];
    if (response.socket === serial && !response.ended) finish(id, "closed");
  }
  if (!current) return; // a socket the page had already replaced
  const why = event.code === 1012
    ? "The server is restarting (1012); the next Speak reconnects."
    : `The connection closed (${event.code}${event.reason ? `: ${event.reason}` : ""}).`;
  setStatus(why, event.code === 1000 || event.code === 1012 ? "" : "error");
}

async function ensureSession(wanted) {
  const key = $("key").value.trim();
  if (!socket || socketKey !== key) {
    if (socket) socket.close(1000);
    socket = null;
    try {
      socket = await openSocket(key); // one Speak at a time: socketSerial is now this socket's
    } catch (error) {
      throw new Error(await refusal(key));
    }
    socketKey = key;
    sessionSettings = "";
  }
  const session = audioSession(wanted);
  if (session !== sessionSettings) {
    sessionSettings = session;
    sessionReady = new Promise((resolve, reject) => { sessionWaiter = { resolve, reject }; });
    send({
      type: "session.update",
      session: { audio: { format: wanted.format, sample_rate: wanted.rate }, timestamps: true },
    });
  }
  return sessionReady;
}

function audioSession(wanted) {
  // What of the settings belongs to the session (voice and speed go with each response).
  return JSON.stringify({ format: wanted.format, rate: wanted.rate });
}

function send(event) {
  socket.send(JSON.stringify(event));
}

// ---- responses -----------------------------------------------------------------------

function live() {
  // Still to be heard: neither played out, nor stopped, nor ended with nothing to play.
  return figures.order.filter((id) => !figures.responses[id].done);
}

function speakNext() {
  speaking = speaking.then(speak);
}

async function speak() {
  const text = $("text").value.trim();
  if (!text) { setStatus("Type something to say first.", "error"); return; }
  const wanted = settings();
  const key = $("key").value.trim();
  if (key) sessionStorage.setItem(KEY_STORE, key); else sessionStorage.removeItem(KEY_STORE);
  if (live().length && ($("barge").checked || audioSession(wanted) !== sessionSettings)) {
    stop(); // barge in; or the audio settings change, which queued responses cannot follow
  }
  const queued = live().length > 0;
  try {
    await ensureAudio(wanted.rate);
    await ensureSession(wanted);
  } catch (error) {
    setStatus(error.message, "error");
    return;
  }
  const id = `p${++sequence}`;
  figures.responses[id] = {
    id, text, words: [], lit: [], litAtMs: [], format: wanted.format, sentAt: performance.now(), socket: socketSerial,
    firstAudioMs: null, firstSoundMs: null, samples: 0, largestDelta: 0, played: 0, stalledSeconds: 0,
    ended: null, done: false, heardAll: false,
  };
  figures.order.push(id);
  send({ type: "response.create", response_id: id, input: text, voice: wanted.voice,
         speed: wanted.speed, timestamps: true });
  setStatus(queued ? "Queued after what is speaking." : "Speaking…");
  if (!queued) show(id); // a queued one is shown when it starts to play
}

function stop() {
  // Everything still to be heard falls silent now; what the server is still making is
  // canceled (a response it has finished making is only dropped from the player).
  const ids = live();
  if (!ids.length) return;
  let canceling = false;
  for (const id of ids) {
    const response = figures.responses[id];
    response.playedAtStop = response.played;
    response.done = true;
    if (!response.ended && !response.stopping && socket && response.socket === socketSerial) {
      send({ type: "response.cancel", response: id });
      response.stopping = true;
      canceling = true;
    }
  }
  if (audio) audio.player.port.postMessage({ type: "clear" });
  for (const span of $("words").querySelectorAll(".word.now")) span.classList.remove("now");
  setStatus(canceling ? "Stopping…" : "Stopped.");
}

function finish(id, how) {
  const response = figures.responses[id];
  if (!response || response.ended) return;
  response.ended = how;
  if (!response.samples && !response.done) {
    // Nothing was played, so the player will never report it done.
    response.done = true;
    response.heardAll = how === "completed";
    if (how === "completed" && !live().length) setStatus("Nothing to say in that.");
  }
  if (audio) audio.player.port.postMessage({ type: "end", id });
  render(id);
}

function received(event) {
  figures.events.push({ type: event.type, response: event.response ?? null });
  const response = event.response ? figures.responses[event.response] : null;
  switch (event.type) {
    case "session.updated":
      figures.session = event.session;
      sessionWaiter?.resolve(event.session);
      break;
    case "response.output_audio.timestamps":
      if (response) { response.words.push(...event.words); showWords(response); }
      break;
    case "response.output_audio.delta": {
      if (!response || response.stopping || response.ended) break; // stopped: never played
      const samples = decode(event.delta, response.format);
      if (response.firstAudioMs === null) response.firstAudioMs = performance.now() - response.sentAt;
      response.samples += samples.length;
      response.largestDelta = Math.max(response.largestDelta, samples.length);
      audio.player.port.postMessage({ type: "audio", id: response.id, samples }, [samples.buffer]);
      render(response.id);
      break;
    }
    case "response.completed":
      finish(event.response, "completed");
      break;
    case "response.canceled":
      finish(event.response, "canceled");
      if (!figures.order.some((id) => figures.responses[id].stopping && !figures.responses[id].ended)) {
        setStatus("Stopped.");
      }
      break;
    case "response.error":
      finish(event.response, "error");
      setStatus(`${event.code}: ${event.message}`, "error");
      break;
    case "error":
      if (event.error.event_type === "response.cancel" && event.error.code === "unknown_response") {
        break; // it had ended already: nothing left to stop
      }
      if (event.error.event_type === "session.update") {
        sessionSettings = "";
        sessionWaiter?.reject(new Error(`${event.error.code}: ${event.error.message}`));
      }
      setStatus(`${event.error.code}: ${event.error.message}`, "error");
      break;
    default:
      break;
  }
}

function heard(message) {
  figures.player = message;
  const response = message.id ? figures.responses[message.id] : null;
  if (!response) return;
  if (message.type === "cleared") {
    response.playedAtClear = message.played;
    return;
  }
  if (figures.showing !== response.id && !response.done) show(response.id); // its turn to play
  if (message.type === "audible") {
    response.firstSoundMs = performance.now() - response.sentAt + 1000 * message.after
      + 1000 * (audio.context.outputLatency || 0);
    render(response.id);
    return;
  }
  response.played = message.played;
  response.playerReceived = message.received;
  response.stalledSeconds = message.stalled;
  light(response, (1000 * message.played) / audio.rate);
  if (message.done) {
    response.done = true;
    response.heardAll = response.ended === "completed";
    if (response.heardAll && !live().length) setStatus("Done.");
  }
  render(response.id);
}

// ---- what the page shows -------------------------------------------------------------

function show(id) {
  figures.showing = id;
  showWords(figures.responses[id]);
  render(id);
}

function showWords(response) {
  if (figures.showing !== response.id) return;
  const words = $("words");
  words.replaceChildren();
  // krt's offsets count code points (Python's str), not JavaScript's UTF-16 units.
  const chars = Array.from(response.text);
  const slice = (start, end) => chars.slice(start, end).join("");
  let at = 0;
  response.words.forEach((word, index) => {
    words.append(slice(at, word.char_start));
    const span = document.createElement("span");
    span.className = "word" + (response.lit.includes(index) ? " spoken" : "");
    span.dataset.index = index;
    span.textContent = slice(word.char_start, word.char_end);
    words.append(span);
    at = word.char_end;
  });
  words.append(slice(at));
}

function light(response, playedMs) {
  // Every word whose sound has started is lit, in order, even if a report skipped one.
  response.words.forEach((word, index) => {
    if (word.start_ms <= playedMs && !response.lit.includes(index)) {
      response.lit.push(index);
      response.litAtMs.push(playedMs);
    }
  });
  if (figures.showing !== response.id) return;
  const now = response.words.findLastIndex((word) => word.start_ms <= playedMs);
  for (const span of $("words").querySelectorAll(".word")) {
    const index = Number(span.dataset.index);
    span.classList.toggle("spoken", response.lit.includes(index));
    span.classList.toggle("now", index === now && playedMs < response.words[index].end_ms);
  }
}

function seconds(ms) {
  return ms === null || ms === undefined ? "–" : `${Math.round(ms)} ms`;
}

function render(id) {
  if (figures.showing !== id) return;
  const response = figures.responses[id];
  $("first-audio").textContent = seconds(response.firstAudioMs);
  $("first-sound").textContent = seconds(response.firstSoundMs);
  $("audio-seconds").textContent = `${(response.samples / audio.rate).toFixed(2)} s`;
  $("stalls").textContent = response.stalledSeconds >= 0.005
    ? `${response.stalledSeconds.toFixed(2)} s` : "none";
  $("state").textContent = response.playedAtStop !== undefined ? "stopped"
    : response.heardAll ? "completed"
    : response.ended === "completed" ? "all made, playing"
    : response.ended ?? "speaking";
}

// ---- wiring --------------------------------------------------------------------------

function start() {
  if (document.body.dataset.keyRequired === "true") $("key-section").hidden = false;
  $("key").value = sessionStorage.getItem(KEY_STORE) ?? "";
  const speed = () => { $("speed-value").textContent = `${$("speed").value}×`; };
  speed(); // a reload may restore the slider, not its label
  $("speed").addEventListener("input", speed);
  $("speak").addEventListener("click", speakNext);
  $("stop").addEventListener("click", stop);
  $("key-section").addEventListener("submit", (event) => { event.preventDefault(); speakNext(); });
  $("text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) speakNext();
  });
  loadVoices();
}

start();
