// The playground's player: an AudioWorklet that plays the audio the page hands it as it
// comes, from a ring buffer, and says what it played. Runs on the audio thread, so it
// only copies samples and counts; the page does the decoding and the drawing.
//
// Messages in:  {type: "audio", id, samples: Float32Array}  a response's next samples
//               {type: "end", id}    the response has no more audio (an underrun after
//                                    this is its end, not a stall)
//               {type: "clear"}      drop everything buffered: Stop and barge-in
// Messages out: {type: "progress", …}  every REPORT_EVERY quanta while anything changes
//               {type: "audible", id}  the response's first audible sample just played
//               {type: "cleared", id, played}  the buffer is empty: silence
//                                    from the next quantum (128 samples) on

const AUDIBLE = 10 ** (-50 / 20); // krt's threshold: a sample above -50 dBFS is heard
const REPORT_EVERY = 4; // quanta of 128 samples: ~21 ms at 24 kHz

class PcmPlayer extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ring = new Float32Array(sampleRate * 8);
    this.readAt = 0; // absolute sample indexes: the ring holds [readAt, writeAt)
    this.writeAt = 0;
    this.spans = []; // {id, start, end, ended, audible, stalled, received}, in order
    this.quanta = 0;
    this.peak = 0; // the loudest sample since the last report
    this.silent = false; // the last report said: nothing buffered, nothing played
    this.port.onmessage = (event) => this.receive(event.data);
  }

  receive(message) {
    if (message.type === "audio") {
      let span = this.spans.at(-1);
      if (!span || span.id !== message.id) {
        span = { id: message.id, start: this.writeAt, end: this.writeAt, ended: false,
                 audible: false, stalled: 0, received: 0, playing: false };
        this.spans.push(span);
      }
      this.write(message.samples);
      span.end = this.writeAt;
      span.received += message.samples.length;
    } else if (message.type === "end") {
      for (const span of this.spans) if (span.id === message.id) span.ended = true;
    } else if (message.type === "clear") {
      const playing = this.spans[0];
      this.port.postMessage({
        type: "cleared", id: playing ? playing.id : null, buffered: 0,
        played: playing ? this.played(playing) : 0,
      });
      this.readAt = this.writeAt;
      this.spans = [];
    }
  }

  write(samples) {
    const buffered = this.writeAt - this.readAt;
    if (buffered + samples.length > this.ring.length) this.grow(buffered + samples.length);
    this.copyInto(this.ring, this.writeAt, samples);
    this.writeAt += samples.length;
  }

  grow(needed) {
    // A queue of long responses may be made faster than it plays: never drop audio.
    let size = this.ring.length;
    while (size < needed) size *= 2;
    const ring = new Float32Array(size);
    const from = this.readAt % this.ring.length;
    const count = this.writeAt - this.readAt;
    const first = this.ring.subarray(from, Math.min(this.ring.length, from + count));
    const wrapped = this.ring.subarray(0, count - first.length);
    // Copied to the same absolute indexes in the bigger ring, which may wrap there too.
    this.copyInto(ring, this.readAt, first);
    this.copyInto(ring, this.readAt + first.length, wrapped);
    this.ring = ring;
  }

  copyInto(ring, at, samples) {
    const start = at % ring.length;
    const head = Math.min(samples.length, ring.length - start);
    ring.set(samples.subarray(0, head), start);
    ring.set(samples.subarray(head), 0);
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    out.fill(0);
    let written = 0;
    while (written < out.length && this.spans.length) {
      const span = this.spans[0];
      if (this.readAt >= span.end) {
        if (!span.ended) {
          // Nothing more of the playing response yet: a stall, counted once it started.
          if (span.playing) span.stalled += out.length - written;
          break;
        }
        this.report(span, true);
        this.spans.shift();
        continue;
      }
      const count = Math.min(out.length - written, span.end - this.readAt);
      for (let k = 0; k < count; k++) {
        const sample = this.ring[(this.readAt + k) % this.ring.length];
        out[written + k] = sample;
        const level = Math.abs(sample);
        if (level > this.peak) this.peak = level;
        if (!span.audible && level > AUDIBLE) {
          span.audible = true;
          this.port.postMessage({ type: "audible", id: span.id, after: (written + k) / sampleRate });
        }
      }
      span.playing = true;
      this.readAt += count;
      written += count;
    }
    if (++this.quanta % REPORT_EVERY === 0) {
      if (this.spans.length) this.report(this.spans[0], false);
      else this.idle();
    }
    return true;
  }

  played(span) {
    return Math.min(this.readAt, span.end) - span.start;
  }

  report(span, done) {
    this.port.postMessage({
      type: "progress", id: span.id, done,
      played: this.played(span), received: span.received,
      stalled: span.stalled / sampleRate, buffered: this.writeAt - this.readAt, peak: this.peak,
    });
    this.peak = 0;
    this.silent = false;
  }

  idle() {
    // One report once the last response is gone, so the page sees the silence.
    if (this.peak === 0 && this.silent) return;
    this.port.postMessage({ type: "progress", id: null, done: true, buffered: 0, peak: this.peak });
    this.silent = this.peak === 0;
    this.peak = 0;
  }
}

registerProcessor("pcm-player", PcmPlayer);
