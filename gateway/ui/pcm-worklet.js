/**
 * AudioWorklet processor "pcm-capture": turns the microphone's float samples
 * at the AudioContext's rate (44.1/48 kHz, whatever the device gives) into
 * 16-bit PCM at `targetRate` (16 kHz) and posts one ArrayBuffer per frame of
 * `frameSamples` samples (960 = 60 ms, what FunASR clients send).
 *
 * Resampling runs here rather than through an AudioContext created at 16 kHz
 * because Firefox refuses to connect a microphone to a context of another
 * rate. A box filter as long as the rate ratio takes the band above the new
 * Nyquist frequency down before linear interpolation; for speech going into
 * a 16 kHz model that is enough, and it costs a few operations per sample on
 * the audio thread.
 *
 * Messages in: "flush" posts the partly filled frame (end of input), then
 * the string "flushed".
 */
class PcmCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = options.processorOptions;
    /** Input samples per output sample. */
    this.step = sampleRate / o.targetRate;
    this.frameSamples = o.frameSamples;
    this.frame = new Int16Array(this.frameSamples);
    this.filled = 0;
    const k = Math.max(1, Math.round(this.step));
    this.ring = new Float32Array(k);
    this.ringPos = 0;
    this.sum = 0;
    /** Index of the next input sample, and the input-time of the next output sample. */
    this.inIndex = 0;
    this.outTime = 0;
    this.last = 0;
    this.port.onmessage = (e) => {
      if (e.data !== "flush") return;
      this.post(this.filled);
      // Tells the page that every sample captured so far has been posted.
      this.port.postMessage("flushed");
    };
  }

  post(n) {
    if (n === 0) return;
    const out = this.frame.slice(0, n);
    this.port.postMessage(out.buffer, [out.buffer]);
    this.filled = 0;
  }

  push(v) {
    const c = v < -1 ? -1 : v > 1 ? 1 : v;
    this.frame[this.filled++] = c < 0 ? c * 0x8000 : c * 0x7fff;
    if (this.filled === this.frameSamples) this.post(this.filled);
  }

  process(inputs) {
    const input = inputs[0];
    if (input === undefined || input.length === 0) return true;
    const channels = input.length;
    const n = input[0].length;
    const k = this.ring.length;
    for (let i = 0; i < n; i++) {
      let v = 0;
      for (let c = 0; c < channels; c++) v += input[c][i];
      v /= channels;
      this.sum += v - this.ring[this.ringPos];
      this.ring[this.ringPos] = v;
      this.ringPos = (this.ringPos + 1) % k;
      const y = this.sum / k;
      // Output samples whose time falls between the previous input sample and this one.
      while (this.outTime <= this.inIndex) {
        const f = this.outTime - (this.inIndex - 1);
        this.push(this.last + (y - this.last) * f);
        this.outTime += this.step;
      }
      this.last = y;
      this.inIndex++;
    }
    // Keep the counters small so that float precision never degrades over hours.
    if (this.inIndex > 1e6) {
      this.inIndex -= 1e6;
      this.outTime -= 1e6;
    }
    return true;
  }
}

registerProcessor("pcm-capture", PcmCapture);
