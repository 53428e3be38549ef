/**
 * Small pieces the grpc-js-level gateway tests share: waiting for a condition,
 * and listening a test's own asr.v1 server on port 0.
 */
import { ServerCredentials, type Server } from "@grpc/grpc-js";

/** Resolves once `cond()` holds; throws "timed out waiting for <what>" after `ms`. */
export async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Binds `server` (its services already added) to 127.0.0.1 on a free port; resolves to "127.0.0.1:PORT". */
export async function listenOnFreePort(server: Server): Promise<string> {
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  );
  return `127.0.0.1:${port}`;
}
