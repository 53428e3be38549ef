/**
 * A preload for the stub worker under benchmark that gives its HTTP/2 server
 * large receive windows, the way the real worker's gRPC C-core grows them
 * (BDP probing):
 *
 *   npm run bench:gateway -- --worker stub --worker-node-arg=--import=./bench/lib/h2-window.ts ...
 *
 * Why: grpc-js servers keep Node's default 64 KiB stream and connection
 * windows. All of a gateway's sessions share one connection to a worker, so
 * at 500 streams (~16 MB/s of audio) the sender may put only 64 KiB in
 * flight and then waits for the stub's event loop — which shares a core with
 * the load generator in the pinned benchmark — to read and send a
 * WINDOW_UPDATE. That wait is a property of the stub, not of the gateway or
 * the production worker. H2_WINDOW_BYTES overrides the size (default 16 MiB).
 */
import http2 from "node:http2";

const windowBytes = Number(process.env.H2_WINDOW_BYTES ?? 16 * 1024 * 1024);
const create = http2.createServer.bind(http2);

// grpc-js calls http2.createServer(options) through the module object, so replacing the
// property before the stub builds its server is enough.
(http2 as { createServer: typeof http2.createServer }).createServer = ((options: http2.ServerOptions, ...rest: unknown[]) => {
  const opts: http2.ServerOptions = { ...options, settings: { ...options?.settings, initialWindowSize: Math.min(windowBytes, 2 ** 31 - 1) } };
  const server = (create as (o: http2.ServerOptions, ...r: unknown[]) => http2.Http2Server)(opts, ...rest);
  server.on("session", (session) => session.setLocalWindowSize(windowBytes));
  return server;
}) as typeof http2.createServer;
