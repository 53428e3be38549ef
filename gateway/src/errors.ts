/**
 * The ONE catalog of gateway error codes.
 *
 * Every error a client can see has a stable machine code here, with the
 * human-readable message, the WebSocket close code used when the session
 * cannot go on, whether retrying (elsewhere or later) can succeed, and the
 * gRPC status that corresponds to it (used to map worker call statuses to
 * client errors and to document the relation in one place).
 *
 * Close codes (RFC 6455): 1001 going away, 1003 unsupported data, 1007
 * invalid payload, 1008 policy violation, 1009 message too big, 1011 internal
 * error, 1013 try again later.
 */
import { status as GrpcStatus } from "@grpc/grpc-js";

/** One catalog entry. */
export interface ErrorSpec {
  /** Default human-readable message (never contains audio or transcripts). */
  readonly message: string;
  /** WebSocket close code sent when the error ends the session. */
  readonly closeCode: number;
  /**
   * Whether the session is closed after the error frame. Errors about one
   * message (bad JSON, an odd frame) leave the session usable so that one
   * client bug does not lose a whole recording.
   */
  readonly fatal: boolean;
  /** Whether the same request may succeed when retried (later or elsewhere). */
  readonly retryable: boolean;
  /** The gRPC status with the same meaning. */
  readonly grpcStatus: GrpcStatus;
}

/** All error codes, keyed by their stable machine name. */
export const ERRORS = {
  INVALID_JSON: {
    message: "text frame is not valid JSON",
    closeCode: 1007,
    fatal: false,
    retryable: false,
    grpcStatus: GrpcStatus.INVALID_ARGUMENT,
  },
  INVALID_MESSAGE: {
    message: "message does not match the FunASR protocol",
    closeCode: 1007,
    fatal: false,
    retryable: false,
    grpcStatus: GrpcStatus.INVALID_ARGUMENT,
  },
  UNSUPPORTED_MODE: {
    message: 'mode must be "offline", "online", "2pass" (or "office")',
    closeCode: 1003,
    fatal: false,
    retryable: false,
    grpcStatus: GrpcStatus.INVALID_ARGUMENT,
  },
  UNSUPPORTED_SAMPLE_RATE: {
    message: "audio_fs must be 8000 or 16000",
    closeCode: 1003,
    fatal: false,
    retryable: false,
    grpcStatus: GrpcStatus.INVALID_ARGUMENT,
  },
  INVALID_HOTWORDS: {
    message: "hotwords are malformed or exceed the configured limits",
    closeCode: 1008,
    fatal: false,
    retryable: false,
    grpcStatus: GrpcStatus.INVALID_ARGUMENT,
  },
  BINARY_BEFORE_CONFIG: {
    message: "binary audio arrived before the JSON config message",
    closeCode: 1008,
    fatal: true,
    retryable: false,
    grpcStatus: GrpcStatus.FAILED_PRECONDITION,
  },
  ODD_FRAME_BYTES: {
    message: "PCM frame has an odd byte count (16-bit samples expected); frame dropped",
    closeCode: 1007,
    fatal: false,
    retryable: false,
    grpcStatus: GrpcStatus.INVALID_ARGUMENT,
  },
  FRAME_TOO_LARGE: {
    message: "binary frame exceeds MAX_FRAME_BYTES",
    closeCode: 1009,
    fatal: true,
    retryable: false,
    grpcStatus: GrpcStatus.RESOURCE_EXHAUSTED,
  },
  FILE_TOO_LARGE: {
    message: "offline file exceeds MAX_FILE_BYTES",
    closeCode: 1009,
    fatal: true,
    retryable: false,
    grpcStatus: GrpcStatus.RESOURCE_EXHAUSTED,
  },
  UNSUPPORTED_FORMAT: {
    message: "wav_format is not supported by this gateway",
    closeCode: 1003,
    fatal: false,
    retryable: false,
    grpcStatus: GrpcStatus.INVALID_ARGUMENT,
  },
  DECODE_FAILED: {
    message: "the audio file could not be decoded",
    closeCode: 1007,
    fatal: false,
    retryable: false,
    grpcStatus: GrpcStatus.INVALID_ARGUMENT,
  },
  NO_WORKER_AVAILABLE: {
    message: "no recognition worker is available; retry later",
    closeCode: 1013,
    fatal: true,
    retryable: true,
    grpcStatus: GrpcStatus.UNAVAILABLE,
  },
  WORKER_OVERLOADED: {
    message: "the recognition worker is at capacity; retry later",
    closeCode: 1013,
    fatal: true,
    retryable: true,
    grpcStatus: GrpcStatus.RESOURCE_EXHAUSTED,
  },
  WORKER_UNAVAILABLE: {
    message: "the recognition worker went away; retry",
    closeCode: 1013,
    fatal: true,
    retryable: true,
    grpcStatus: GrpcStatus.UNAVAILABLE,
  },
  WORKER_REJECTED: {
    message: "the recognition worker rejected the session's input",
    closeCode: 1007,
    fatal: true,
    retryable: false,
    grpcStatus: GrpcStatus.INVALID_ARGUMENT,
  },
  WORKER_FAILED: {
    message: "the recognition worker failed",
    closeCode: 1011,
    fatal: true,
    retryable: true,
    grpcStatus: GrpcStatus.INTERNAL,
  },
  INFERENCE_FAILED: {
    message: "recognition of a segment failed",
    closeCode: 1011,
    fatal: false,
    retryable: true,
    grpcStatus: GrpcStatus.INTERNAL,
  },
  SESSION_TOO_LONG: {
    message: "session exceeded MAX_SESSION_SECONDS",
    closeCode: 1008,
    fatal: true,
    retryable: false,
    grpcStatus: GrpcStatus.DEADLINE_EXCEEDED,
  },
  IDLE_TIMEOUT: {
    message: "no message from the client for IDLE_TIMEOUT_SECONDS",
    closeCode: 1008,
    fatal: true,
    retryable: false,
    grpcStatus: GrpcStatus.DEADLINE_EXCEEDED,
  },
  SHUTTING_DOWN: {
    message: "the gateway is shutting down; reconnect",
    closeCode: 1001,
    fatal: true,
    retryable: true,
    grpcStatus: GrpcStatus.UNAVAILABLE,
  },
  INTERNAL: {
    message: "internal gateway error",
    closeCode: 1011,
    fatal: true,
    retryable: true,
    grpcStatus: GrpcStatus.INTERNAL,
  },
} as const satisfies Record<string, ErrorSpec>;

/** A stable machine-readable error code. */
export type ErrorCode = keyof typeof ERRORS;

/** An error that carries a catalog code; thrown inside the gateway, turned into a JSON error frame at the edge. */
export class GatewayError extends Error {
  /** The catalog code. */
  readonly code: ErrorCode;

  /** Creates an error with the catalog message, or a more specific `detail`. */
  constructor(code: ErrorCode, detail?: string) {
    super(detail ?? ERRORS[code].message);
    this.name = "GatewayError";
    this.code = code;
  }

  /** The catalog entry of this error. */
  get spec(): ErrorSpec {
    return ERRORS[this.code];
  }
}

/** The client code of an in-band worker error (asr.v1.ErrorCode). */
export function clientCodeForWorkerError(code: number): ErrorCode {
  return code === 4 ? "INFERENCE_FAILED" : "WORKER_FAILED";
}

/** How a worker call ended, for the client: its code, whether a failover may save it, and a detail. */
export interface CallEnd {
  /** Client-facing code. */
  code: ErrorCode;
  /** Whether another worker may succeed (the session fails over). */
  retryable: boolean;
  /** A more specific message than the catalog's, if any. */
  detail: string | undefined;
}

/** Classifies the status that ended a worker call. */
export function classifyCallEnd(s: { code: GrpcStatus; details: string }): CallEnd {
  if (s.code === GrpcStatus.OK) return { code: "WORKER_UNAVAILABLE", retryable: true, detail: "the recognition worker ended the session" };
  const code = errorCodeForGrpcStatus(s.code);
  const detail = s.details !== "" && code === "WORKER_REJECTED" ? `the worker rejected the input: ${s.details}` : undefined;
  return { code, retryable: ERRORS[code].retryable, detail };
}

/**
 * Maps the status that ended a worker call to a client error code. CANCELLED
 * is never mapped: the gateway itself cancels calls when clients leave.
 */
export function errorCodeForGrpcStatus(code: GrpcStatus): ErrorCode {
  switch (code) {
    case GrpcStatus.INVALID_ARGUMENT:
    case GrpcStatus.FAILED_PRECONDITION:
    case GrpcStatus.OUT_OF_RANGE:
      return "WORKER_REJECTED";
    case GrpcStatus.RESOURCE_EXHAUSTED:
      return "WORKER_OVERLOADED";
    case GrpcStatus.UNAVAILABLE:
    case GrpcStatus.DEADLINE_EXCEEDED:
    case GrpcStatus.ABORTED:
      return "WORKER_UNAVAILABLE";
    default:
      return "WORKER_FAILED";
  }
}
