// GLM-4-Voice web demo: a plain-JS client of the public API (no build step).
// Streams POST /v1/chat/completions with modalities ["text","audio"] and pcm16 audio, shows the transcript as it
// arrives and plays the 24 kHz pcm16 chunks gap-free by scheduling them back to back with Web Audio.
"use strict";

const PCM_RATE = 24000;
const BUILTIN_VOICES = ["alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse",
                        "marin", "cedar"];
const $ = (id) => document.getElementById(id);

// Counters for tests and the curious (see tests/web/test_web_demo.py).
window.demoStats = { samplesScheduled: 0, turns: 0, lastAudioId: null, firstAudioMs: null, rtf: null, errors: [],
                     lastRequestAssistantIds: [] };

const state = { model: null, history: [], busy: false, recorder: null, player: null };

// ---------- API helpers ----------
function headers(json = true) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function errorFrom(response) {
  // The OpenAI error envelope: {"error": {"message", "type", "param", "code"}}.
  let text = await response.text();
  try { const e = JSON.parse(text).error; if (e && e.message) return `${response.status}: ${e.message}`; } catch (_) {}
  return `${response.status} ${response.statusText}: ${text.slice(0, 300)}`;
}

async function getJSON(path) {
  const r = await fetch(path, { headers: headers(false) });
  if (!r.ok) throw new Error(await errorFrom(r));
  return r.json();
}

function showError(message) {
  window.demoStats.errors.push(String(message));
  const box = $("error");
  box.textContent = String(message);
  box.hidden = false;
}

function setStatus(text) { $("status").textContent = text; }

// ---------- setup: model and voices ----------
async function loadModel() {
  try {
    const models = await getJSON("/v1/models");
    const card = models.data[0];
    state.model = card.id;
    $("model-name").textContent = card.id;
    $("random-banner").hidden = !card.random_weights;
  } catch (e) { showError("Could not list models: " + e.message); }
}

async function loadVoices() {
  const select = $("voice");
  const previous = select.value;
  select.innerHTML = "";
  const builtin = document.createElement("optgroup");
  builtin.label = "Built-in (the model's voice)";
  for (const v of BUILTIN_VOICES) builtin.appendChild(new Option(v, "builtin:" + v));
  select.appendChild(builtin);
  try {
    const voices = await getJSON("/v1/audio/voices");
    if (voices.data.length) {
      const custom = document.createElement("optgroup");
      custom.label = "Custom voices";
      for (const v of voices.data) custom.appendChild(new Option(`${v.name} (${v.id})`, "custom:" + v.id));
      select.appendChild(custom);
    }
  } catch (e) { showError("Could not list custom voices: " + e.message); }
  if (previous && [...select.options].some((o) => o.value === previous)) select.value = previous;
}

function voiceParam() {
  const value = $("voice").value || "builtin:alloy";
  return value.startsWith("custom:") ? { id: value.slice(7) } : value.slice(8);
}

// ---------- playback: gap-free scheduling of pcm16 chunks ----------
class Player {
  constructor() {
    this.ctx = new AudioContext();
    this.nextTime = 0;
    this.carry = null;  // an odd trailing byte from the previous chunk
    this.sources = new Set();
  }
  async resume() { if (this.ctx.state !== "running") { try { await this.ctx.resume(); } catch (_) {} } }
  // Queue one base64 pcm16 s16le chunk; returns the number of samples scheduled.
  push(b64) {
    let bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    if (this.carry) { const b = new Uint8Array(bytes.length + 1); b[0] = this.carry[0]; b.set(bytes, 1); bytes = b; }
    this.carry = bytes.length % 2 ? bytes.slice(-1) : null;
    const n = bytes.length >> 1;
    if (!n) return 0;
    const view = new DataView(bytes.buffer, bytes.byteOffset, n * 2);
    const buffer = this.ctx.createBuffer(1, n, PCM_RATE);
    const out = buffer.getChannelData(0);
    for (let i = 0; i < n; i++) out[i] = view.getInt16(2 * i, true) / 32768;
    const src = this.ctx.createBufferSource();
    src.buffer = buffer;
    src.connect(this.ctx.destination);
    // Back to back with the previous chunk; after an underrun, restart a little ahead of now.
    const start = Math.max(this.nextTime, this.ctx.currentTime + 0.05);
    src.start(start);
    this.lastStart = start;
    this.nextTime = start + buffer.duration;
    this.sources.add(src);
    src.onended = () => this.sources.delete(src);
    return n;
  }
  stop() {
    for (const s of this.sources) { try { s.stop(); } catch (_) {} }
    this.sources.clear();
    this.nextTime = 0;
    this.carry = null;
  }
}

function player() { return (state.player ||= new Player()); }

// ---------- recording: PCM via Web Audio, encoded as a 16-bit WAV ----------
class Recorder {
  async start() {
    this.stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true } });
    this.ctx = new AudioContext();
    this.source = this.ctx.createMediaStreamSource(this.stream);
    this.node = this.ctx.createScriptProcessor(4096, 1, 1);
    this.chunks = [];
    this.node.onaudioprocess = (e) => this.chunks.push(new Float32Array(e.inputBuffer.getChannelData(0)));
    const mute = this.ctx.createGain();
    mute.gain.value = 0;  // the processor must reach the destination to run; keep it silent
    this.source.connect(this.node);
    this.node.connect(mute);
    mute.connect(this.ctx.destination);
    await this.ctx.resume();
  }
  // Stop and return {wav: base64, seconds}. The server resamples, so the capture rate is kept.
  async stop() {
    this.source.disconnect(); this.node.disconnect();
    this.stream.getTracks().forEach((t) => t.stop());
    const rate = this.ctx.sampleRate;
    await this.ctx.close();
    const length = this.chunks.reduce((a, c) => a + c.length, 0);
    const pcm = new Float32Array(length);
    let offset = 0;
    for (const c of this.chunks) { pcm.set(c, offset); offset += c.length; }
    return { wav: bytesToBase64(encodeWav(pcm, rate)), seconds: length / rate };
  }
}

function encodeWav(samples, rate) {
  const buffer = new ArrayBuffer(44 + samples.length * 2);
  const v = new DataView(buffer);
  const str = (o, s) => { for (let i = 0; i < s.length; i++) v.setUint8(o + i, s.charCodeAt(i)); };
  str(0, "RIFF"); v.setUint32(4, 36 + samples.length * 2, true); str(8, "WAVE");
  str(12, "fmt "); v.setUint32(16, 16, true); v.setUint16(20, 1, true); v.setUint16(22, 1, true);
  v.setUint32(24, rate, true); v.setUint32(28, rate * 2, true); v.setUint16(32, 2, true); v.setUint16(34, 16, true);
  str(36, "data"); v.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    v.setInt16(44 + 2 * i, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return new Uint8Array(buffer);
}

function bytesToBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

// ---------- conversation ----------
function addBubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const span = document.createElement("span");
  span.className = "text";
  span.textContent = text;
  div.appendChild(span);
  $("conversation").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function setMeta(bubble, text) {
  let meta = bubble.querySelector(".meta");
  if (!meta) { meta = document.createElement("span"); meta.className = "meta"; bubble.appendChild(meta); }
  meta.textContent = text;
}

function setBusy(busy) {
  state.busy = busy;
  $("send").disabled = busy;
  $("talk").disabled = busy;
}

function numberSetting(id) {
  const raw = $(id).value.trim();
  if (raw === "") return undefined;
  const n = Number(raw);
  return Number.isFinite(n) ? n : undefined;
}

// Send one user message and stream the reply. On success the turn joins the history (by its audio id).
async function sendTurn(userMessage, label) {
  if (state.busy) return;
  $("error").hidden = true;
  setBusy(true);
  const p = player();
  await p.resume();
  p.stop();

  addBubble("user", label);
  const bubble = addBubble("assistant streaming", "");
  const textSpan = bubble.querySelector(".text");

  const messages = [];
  const instructions = $("instructions").value.trim();
  if (instructions) messages.push({ role: "system", content: instructions });
  messages.push(...state.history, userMessage);
  const body = {
    model: state.model || "glm-4-voice-9b",
    messages,
    stream: true,
    modalities: ["text", "audio"],
    audio: { voice: voiceParam(), format: "pcm16" },
    temperature: numberSetting("temperature"),
    top_p: numberSetting("top-p"),
    max_completion_tokens: numberSetting("max-tokens"),
  };
  window.demoStats.lastRequestAssistantIds = state.history.filter((m) => m.role === "assistant" && m.audio)
    .map((m) => m.audio.id);

  const t0 = performance.now();
  let firstAudioMs = null, samples = 0, audioId = null, transcript = "", failed = null;
  setStatus("Waiting for the reply…");
  try {
    const response = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    if (!response.ok) throw new Error(await errorFrom(response));
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "", done = false;
    while (!done) {
      const { value, done: end } = await reader.read();
      if (end) break;
      buffered += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, nl).replace(/\r$/, "");
        buffered = buffered.slice(nl + 1);
        if (!line.startsWith("data:")) continue;
        const payload = line.slice(5).trim();
        if (payload === "[DONE]") { done = true; break; }
        const chunk = JSON.parse(payload);
        if (chunk.error) throw new Error(chunk.error.message || JSON.stringify(chunk.error));
        const delta = (chunk.choices && chunk.choices[0] && chunk.choices[0].delta) || {};
        if (delta.content) { transcript += delta.content; textSpan.textContent = transcript; }
        const audio = delta.audio;
        if (!audio) continue;
        if (audio.id) audioId = audio.id;
        if (audio.transcript) { transcript += audio.transcript; textSpan.textContent = transcript; }
        if (audio.data) {
          const n = p.push(audio.data);
          if (n && firstAudioMs === null) {
            firstAudioMs = performance.now() - t0;
            setStatus("Playing…");
          }
          samples += n;
          window.demoStats.samplesScheduled += n;
        }
      }
    }
    if (!done) throw new Error("The stream ended without data: [DONE].");
  } catch (e) {
    failed = e;
  }
  const elapsed = (performance.now() - t0) / 1000;
  const seconds = samples / PCM_RATE;
  const rtf = seconds > 0 ? elapsed / seconds : null;
  bubble.classList.remove("streaming");
  if (!transcript) textSpan.textContent = failed ? "(no reply)" : "(no text)";
  const parts = [];
  if (firstAudioMs !== null) parts.push(`first audio ${Math.round(firstAudioMs)} ms`);
  if (seconds) parts.push(`${seconds.toFixed(2)} s audio`, `RTF ${rtf.toFixed(2)}`);
  if (parts.length) setMeta(bubble, parts.join(" · "));

  if (failed) {
    showError(failed.message);
    setStatus("Error.");
  } else {
    state.history.push(userMessage, audioId ? { role: "assistant", audio: { id: audioId } }
                                            : { role: "assistant", content: transcript });
    Object.assign(window.demoStats, { turns: window.demoStats.turns + 1, firstAudioMs, rtf });
    if (audioId) window.demoStats.lastAudioId = audioId;
    setStatus("Ready.");
  }
  setBusy(false);
}

// ---------- UI wiring ----------
async function startTalking(event) {
  event.preventDefault();
  if (state.busy || state.recorder) return;
  $("error").hidden = true;
  const recorder = new Recorder();
  state.recorder = recorder;
  $("talk").classList.add("recording");
  $("talk").textContent = "● Recording… release to send";
  setStatus("Listening…");
  try {
    await player().resume();
    await recorder.start();
  } catch (e) {
    state.recorder = null;
    resetTalkButton();
    showError("Microphone: " + e.message);
  }
  if (recorder.stopRequested) stopTalking();
}

async function stopTalking() {
  const recorder = state.recorder;
  if (!recorder) return;
  if (!recorder.node) { recorder.stopRequested = true; return; }  // still starting; stop when ready
  state.recorder = null;
  resetTalkButton();
  const { wav, seconds } = await recorder.stop();
  if (seconds < 0.2) { setStatus("Too short: hold the button while you speak."); return; }
  await sendTurn({ role: "user", content: [{ type: "input_audio", input_audio: { data: wav, format: "wav" } }] },
                 `Voice message · ${seconds.toFixed(1)} s of speech`);
}

function resetTalkButton() {
  $("talk").classList.remove("recording");
  $("talk").textContent = "Hold to talk";
}

function init() {
  const talk = $("talk");
  talk.addEventListener("pointerdown", startTalking);
  talk.addEventListener("pointerup", stopTalking);
  talk.addEventListener("pointerleave", stopTalking);
  talk.addEventListener("pointercancel", stopTalking);
  talk.addEventListener("keydown", (e) => { if ((e.key === " " || e.key === "Enter") && !e.repeat) startTalking(e); });
  talk.addEventListener("keyup", (e) => { if (e.key === " " || e.key === "Enter") stopTalking(); });
  $("text-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("text-input").value.trim();
    if (!text || state.busy) return;
    $("text-input").value = "";
    sendTurn({ role: "user", content: text }, text);
  });
  $("reset").addEventListener("click", () => {
    if (state.busy) return;
    state.history = [];
    if (state.player) state.player.stop();
    $("conversation").innerHTML = "";
    $("error").hidden = true;
    setStatus("New conversation.");
  });
  loadModel();
  loadVoices();
}

init();
