/**
 * Logging: pino JSON lines on stdout. Sessions log through child loggers
 * that carry the session id, wav_name and worker address. Audio and
 * transcript text are never logged (they are personal data); only sizes,
 * counts, codes and timings are.
 */
import { pino, type Logger, type LevelWithSilent } from "pino";

/** Creates the root logger (the composition root owns it and passes it down). */
export function createLogger(level: LevelWithSilent, destination?: NodeJS.WritableStream): Logger {
  const options = {
    level,
    base: { service: "asr-gateway" },
    // Defence in depth: if a caller ever passes these keys, they never reach the log.
    redact: { paths: ["text", "pcm", "audio", "hotwords", "token", "req.headers.authorization"], remove: true },
  };
  return destination === undefined ? pino(options) : pino(options, destination as pino.DestinationStream);
}
