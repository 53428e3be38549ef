/**
 * The gateway's view of the ONE error catalog (proto/asr/v1/errors.toml,
 * generated into gen/asr/v1/errors_catalog.ts for this side and into
 * worker-py/asr/v1/errors_catalog.py for the worker).
 *
 * Every error a client can see has a stable machine code there, with its
 * message, WebSocket close code, whether it ends the session and whether
 * retrying can succeed. Worker errors reach clients through the same table:
 * an in-band asr.v1.Error by its code's `client_code` (its `retryable` comes
 * from the wire), a call-ending gRPC status through the worker rows that use
 * that status.
 */
import { status as GrpcStatus } from "@grpc/grpc-js";
import { ErrorCode as WireErrorCode } from "./gen/asr/v1/asr.js";
import { CLIENT_ERRORS, WORKER_ERRORS, type ClientErrorCode, type ClientErrorSpec } from "./gen/asr/v1/errors_catalog.js";

/** One catalog entry. */
export type ErrorSpec = ClientErrorSpec;

/** All client error codes, keyed by their stable machine name. */
export const ERRORS = CLIENT_ERRORS;

/** A stable machine-readable error code. */
export type ErrorCode = ClientErrorCode;

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

/** The client code of an in-band worker error (an asr.v1.ErrorCode; unknown codes are WORKER_FAILED). */
export function clientCodeForWorkerError(code: WireErrorCode): ErrorCode {
  if (code === WireErrorCode.ERROR_CODE_UNSPECIFIED || code === WireErrorCode.UNRECOGNIZED) return "WORKER_FAILED";
  return WORKER_ERRORS[code]?.clientCode ?? "WORKER_FAILED";
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

/**
 * Call-ending statuses the catalog's worker rows use: the first row (in
 * enum order) with that status whose client code is fatal — a call that
 * ended cannot go on, whatever the same code means in-band.
 */
const BY_STATUS: ReadonlyMap<GrpcStatus, { code: ErrorCode; retryable: boolean }> = (() => {
  const m = new Map<GrpcStatus, { code: ErrorCode; retryable: boolean }>();
  for (const spec of Object.values(WORKER_ERRORS)) {
    if (!m.has(spec.grpcStatus) && ERRORS[spec.clientCode].fatal) m.set(spec.grpcStatus, { code: spec.clientCode, retryable: spec.retryable });
  }
  return m;
})();

/**
 * Classifies the status that ended a worker call. CANCELLED never gets here:
 * the gateway cancels calls itself, after detaching from them. A status no
 * worker row uses (a crashed worker, a cut connection) is WORKER_FAILED,
 * retryable; OK without an acknowledgement means the worker walked away.
 */
export function classifyCallEnd(s: { code: GrpcStatus; details: string }): CallEnd {
  if (s.code === GrpcStatus.OK) return { code: "WORKER_UNAVAILABLE", retryable: true, detail: "the recognition worker ended the session" };
  const row = BY_STATUS.get(s.code) ?? { code: "WORKER_FAILED", retryable: true };
  const detail = s.details !== "" && row.code === "WORKER_REJECTED" ? `the worker rejected the input: ${s.details}` : undefined;
  return { code: row.code, retryable: row.retryable, detail };
}
