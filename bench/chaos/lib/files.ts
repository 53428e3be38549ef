/**
 * The audio every chaos run plays: each entry lasts 40-45 s ("name*K" plays the
 * file K times back to back) with several VAD segments, so that a fault injected
 * ~12 s into a run lands in the middle of every session, between and inside
 * segments alike. Files are named relative to the shared audio directory.
 */
export const CHAOS_FILES = ["synth/three_utterances.wav*2", "zh/long.wav*5", "zh/binhai.wav*7", "zh/damo.wav*7", "zh/mid.wav*8"];
