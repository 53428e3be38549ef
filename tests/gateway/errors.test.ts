/**
 * The gateway's side of the one error catalog (proto/asr/v1/errors.toml):
 * every wire code has a client code, call-ending statuses map to fatal
 * client codes, and transport failures stay retryable so sessions fail over.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { status as GrpcStatus } from "@grpc/grpc-js";
import { ERRORS, classifyCallEnd, clientCodeForWorkerError } from "../../gateway/src/errors.js";
import { ErrorCode } from "../../gateway/src/gen/asr/v1/asr.js";
import { WORKER_ERRORS } from "../../gateway/src/gen/asr/v1/errors_catalog.js";

describe("error catalog", () => {
  test("every asr.v1.ErrorCode but UNSPECIFIED has a worker row whose client code exists", () => {
    const wire = Object.values(ErrorCode).filter((v): v is ErrorCode => typeof v === "number" && v > 0);
    assert.deepEqual(Object.keys(WORKER_ERRORS).map(Number).sort(), wire.sort());
    for (const spec of Object.values(WORKER_ERRORS)) assert.ok(spec.clientCode in ERRORS, spec.clientCode);
  });

  test("in-band worker errors map through the table; unknown codes are WORKER_FAILED", () => {
    assert.equal(clientCodeForWorkerError(ErrorCode.ERROR_CODE_INFERENCE_FAILED), "INFERENCE_FAILED");
    assert.equal(ERRORS.INFERENCE_FAILED.fatal, false, "a failed segment does not end the session");
    assert.equal(clientCodeForWorkerError(ErrorCode.ERROR_CODE_OVERLOADED), "WORKER_OVERLOADED");
    assert.equal(clientCodeForWorkerError(ErrorCode.ERROR_CODE_UNSPECIFIED), "WORKER_FAILED");
    assert.equal(clientCodeForWorkerError(ErrorCode.UNRECOGNIZED), "WORKER_FAILED");
  });

  test("call-ending statuses map to fatal client codes derived from the worker rows", () => {
    const cases: Array<[GrpcStatus, string, boolean]> = [
      [GrpcStatus.INVALID_ARGUMENT, "WORKER_REJECTED", false],
      [GrpcStatus.RESOURCE_EXHAUSTED, "WORKER_OVERLOADED", true],
      [GrpcStatus.UNAVAILABLE, "WORKER_UNAVAILABLE", true],
      // INTERNAL is both INFERENCE_FAILED (in-band, not fatal) and INTERNAL: an ended call is fatal.
      [GrpcStatus.INTERNAL, "WORKER_FAILED", true],
      // No worker row uses these: a crashed process or a cut connection, worth a failover.
      [GrpcStatus.UNKNOWN, "WORKER_FAILED", true],
      [GrpcStatus.DEADLINE_EXCEEDED, "WORKER_FAILED", true],
      [GrpcStatus.OK, "WORKER_UNAVAILABLE", true],
    ];
    for (const [code, expected, retryable] of cases) {
      const end = classifyCallEnd({ code, details: "x" });
      assert.deepEqual([end.code, end.retryable], [expected, retryable], GrpcStatus[code]);
      assert.ok(ERRORS[end.code].fatal, `${expected} is fatal`);
    }
    assert.match(classifyCallEnd({ code: GrpcStatus.INVALID_ARGUMENT, details: "odd byte count" }).detail!, /odd byte count/);
  });
});
