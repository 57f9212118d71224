// Hands-free conversation over the Realtime API (GET /v1/realtime, a WebSocket): the microphone streams 24 kHz
// pcm16 in 20 ms frames, the server's voice activity detection decides when you start and stop speaking and answers
// by itself; speaking while it answers interrupts it (barge-in): playback stops and the unheard rest of the answer
// is cut from the conversation (conversation.item.truncate). Browsers cannot set headers on a WebSocket, so with an
// API key the page first asks for a short-lived client secret (POST /v1/realtime/client_secrets) and offers it as
// the `openai-insecure-api-key.` subprotocol, as OpenAI's browser clients do.
"use strict";

window.demoStats.handsFree = { connected: false, speechStarted: 0, speechStopped: 0, audioDeltas: 0, interrupted: 0,
                               truncated: 0, responses: [], errors: [] };

class HandsFree {
  constructor() {
    this.ws = null;
    this.items = new Map();  // assistant item id -> {firstStart, samples, bubble, text}
    this.current = null;     // the assistant item being played
    this.frame = [];
  }

  async start() {
    const stats = window.demoStats.handsFree;
    const protocols = ["realtime"];
    const key = $("api-key").value.trim();
    if (key) protocols.push("openai-insecure-api-key." + (key.startsWith("ek_") ? key : await this.clientSecret()));
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const model = encodeURIComponent(state.model || "glm-4-voice-9b");
    const ws = new WebSocket(`${scheme}//${location.host}/v1/realtime?model=${model}`, protocols);
    this.ws = ws;
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new Error("could not open the Realtime WebSocket"));
    });
    ws.onmessage = (m) => this.onEvent(JSON.parse(m.data));
    ws.onclose = () => {
      if (this.ws !== ws) return;
      state.handsFree = null;
      this.stop("The Realtime session ended.");
    };
    this.send({ type: "session.update", session: this.sessionSettings() });
    stats.connected = true;
    await this.startMicrophone();
    setStatus("Hands-free: speak any time.");
  }

  async clientSecret() {
    const r = await fetch("/v1/realtime/client_secrets",
      { method: "POST", headers: headers(), body: JSON.stringify({ expires_after: { seconds: 60 } }) });
    if (!r.ok) throw new Error(await errorFrom(r));
    return (await r.json()).value;
  }

  sessionSettings() {
    const settings = {
      type: "realtime",
      instructions: $("instructions").value.trim(),
      audio: {
        input: { format: { type: "audio/pcm", rate: PCM_RATE },
                 turn_detection: { type: "server_vad", silence_duration_ms: 500, prefix_padding_ms: 300 } },
        output: { format: { type: "audio/pcm", rate: PCM_RATE }, voice: voiceParam() },
      },
    };
    const maxTokens = numberSetting("max-tokens"), temperature = numberSetting("temperature");
    if (maxTokens !== undefined) settings.max_output_tokens = Math.min(4096, maxTokens);
    if (temperature !== undefined) settings.temperature = temperature;
    return settings;
  }

  async startMicrophone() {
    this.stream = await navigator.mediaDevices.getUserMedia(
      { audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true } });
    this.ctx = new AudioContext({ sampleRate: PCM_RATE });  // the browser resamples the microphone to 24 kHz
    this.source = this.ctx.createMediaStreamSource(this.stream);
    this.node = this.ctx.createScriptProcessor(1024, 1, 1);
    const perFrame = PCM_RATE / 50;  // 20 ms
    this.node.onaudioprocess = (e) => {
      const input = e.inputBuffer.getChannelData(0);
      for (let i = 0; i < input.length; i++) {
        this.frame.push(input[i]);
        if (this.frame.length === perFrame) { this.sendFrame(this.frame); this.frame = []; }
      }
    };
    const mute = this.ctx.createGain();
    mute.gain.value = 0;
    this.source.connect(this.node);
    this.node.connect(mute);
    mute.connect(this.ctx.destination);
    await this.ctx.resume();
  }

  sendFrame(samples) {
    const bytes = new Uint8Array(samples.length * 2);
    const view = new DataView(bytes.buffer);
    samples.forEach((s, i) => view.setInt16(2 * i, Math.max(-1, Math.min(1, s)) * 0x7fff, true));
    this.send({ type: "input_audio_buffer.append", audio: bytesToBase64(bytes) });
  }

  send(event) { if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(event)); }

  // Milliseconds of an assistant item the listener has heard so far.
  heardMs(item) {
    if (item.firstStart === null) return 0;
    const played = Math.max(0, player().ctx.currentTime - item.firstStart) * 1000;
    return Math.floor(Math.min(played, (item.samples / PCM_RATE) * 1000));
  }

  interrupt() {
    const item = this.current;
    if (!item) return;
    const heard = this.heardMs(item);
    const total = Math.floor((item.samples / PCM_RATE) * 1000);
    player().stop();
    this.current = null;
    window.demoStats.handsFree.interrupted++;
    // Only audio the listener has not heard yet is cut: when replies arrive slower than they play (a slow server),
    // everything received was heard and the item stays whole, though the server still cancels the reply.
    if (heard < total) {
      this.send({ type: "conversation.item.truncate", item_id: item.id, content_index: 0, audio_end_ms: heard });
      setMeta(item.bubble, `interrupted after ${(heard / 1000).toFixed(1)} s`);
    }
  }

  onEvent(e) {
    const stats = window.demoStats.handsFree;
    switch (e.type) {
      case "input_audio_buffer.speech_started":
        stats.speechStarted++;
        this.interrupt();
        setStatus("Listening…");
        break;
      case "input_audio_buffer.speech_stopped":
        stats.speechStopped++;
        setStatus("Thinking…");
        break;
      case "conversation.item.added":
        if (e.item.role === "user") addBubble("user", "Voice message (hands-free)");
        break;
      case "response.output_item.added": {
        const bubble = addBubble("assistant streaming", "");
        this.items.set(e.item.id, { id: e.item.id, firstStart: null, samples: 0, bubble, text: "", t0: performance.now() });
        break;
      }
      case "response.output_audio_transcript.delta": {
        const item = this.items.get(e.item_id);
        if (item) { item.text += e.delta; item.bubble.querySelector(".text").textContent = item.text; }
        break;
      }
      case "response.output_audio.delta": {
        const item = this.items.get(e.item_id);
        if (!item) break;
        const p = player();
        const n = p.push(e.delta);
        if (n && item.firstStart === null) {
          item.firstStart = p.lastStart;
          setMeta(item.bubble, `first audio ${Math.round(performance.now() - item.t0)} ms`);
          setStatus("Speaking… (talk to interrupt)");
        }
        item.samples += n;
        this.current = item;
        stats.audioDeltas++;
        window.demoStats.samplesScheduled += n;
        break;
      }
      case "conversation.item.truncated":
        stats.truncated++;
        break;
      case "response.done": {
        const r = e.response;
        stats.responses.push({ id: r.id, status: r.status, reason: r.status_details && r.status_details.reason,
                               inputTokens: r.usage ? r.usage.input_tokens : null });
        for (const out of r.output || []) {
          const item = this.items.get(out.id);
          if (item) item.bubble.classList.remove("streaming");
        }
        if (r.status === "completed") setStatus("Hands-free: speak any time.");
        break;
      }
      case "error":
        stats.errors.push(e.error.message);
        showError("Realtime: " + e.error.message);
        break;
      default:
        break;
    }
  }

  stop(message) {
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close();
    if (this.node) { this.node.disconnect(); this.source.disconnect(); }
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    if (this.ctx) this.ctx.close();
    if (state.player) state.player.stop();
    window.demoStats.handsFree.connected = false;
    setHandsFreeButton(false);
    setStatus(message || "Ready.");
  }
}

function setHandsFreeButton(on) {
  const button = $("handsfree");
  button.setAttribute("aria-pressed", on ? "true" : "false");
  button.textContent = on ? "Stop hands-free" : "Hands-free";
  $("talk").disabled = on;
  $("send").disabled = on;
}

async function toggleHandsFree() {
  if (state.handsFree) {
    const session = state.handsFree;
    state.handsFree = null;
    session.stop();
    return;
  }
  $("error").hidden = true;
  const session = new HandsFree();
  state.handsFree = session;
  setHandsFreeButton(true);
  try {
    await player().resume();
    await session.start();
  } catch (e) {
    state.handsFree = null;
    session.stop();
    showError("Hands-free: " + e.message);
  }
}

$("handsfree").addEventListener("click", toggleHandsFree);
