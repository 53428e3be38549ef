/**
 * Worker discovery: WORKER_ADDRESSES entries may be DNS names that resolve
 * to many addresses — a Kubernetes headless Service (one A record per ready
 * worker pod) or a Compose service scaled with `--scale worker=N` (Docker's
 * DNS answers with every replica). Each resolved address is one worker with
 * its own channel, health watch and load report.
 *
 * Names are re-resolved every WORKER_DNS_REFRESH_SECONDS (default 10 s, 0 =
 * only at start): a worker that appears gets sessions as soon as its health
 * says SERVING; one that disappears leaves placement at once and its sessions
 * fail over (WorkerPool.setAddresses). A failed lookup keeps that name's
 * previous addresses — a DNS hiccup must never empty the pool.
 *
 * IPv4 answers are preferred (IPv6 only when a name has no IPv4 address), so
 * that `localhost` is one worker, not two.
 */
import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import type { Logger } from "pino";

/** Resolves a host name to IP addresses (the test passes its own). */
export type Resolver = (host: string) => Promise<string[]>;

/** The system resolver (getaddrinfo: /etc/hosts, then DNS), IPv4 preferred. */
export const systemResolver: Resolver = async (host) => {
  const v4 = await lookup(host, { all: true, family: 4 }).catch(() => []);
  if (v4.length > 0) return v4.map((a) => a.address);
  return (await lookup(host, { all: true, family: 6 })).map((a) => a.address);
};

/** What discovery is built from. */
export interface WorkerDiscoveryDeps {
  /** WORKER_ADDRESSES entries: host:port, [v6]:port or name:port. */
  targets: readonly string[];
  /** Name resolution. */
  resolve: Resolver;
  /** Re-resolution interval; 0 = resolve only at start. */
  refreshMs: number;
  /** Receives the full address list whenever it changes (and once at start). */
  onAddresses: (addresses: readonly string[]) => void;
  /** Logger. */
  logger: Logger;
}

/** Periodic resolution of worker names (see module comment). */
export class WorkerDiscovery {
  private readonly d: WorkerDiscoveryDeps;
  /** Newest successful answer per target. */
  private readonly known = new Map<string, string[]>();
  private current = "";
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;

  /** Creates discovery; nothing is resolved before start(). */
  constructor(deps: WorkerDiscoveryDeps) {
    this.d = deps;
  }

  /** Resolves every target once (resolves when the pool has its first list), then keeps refreshing. */
  async start(): Promise<void> {
    await this.refresh();
    this.schedule();
  }

  /** Stops refreshing. */
  stop(): void {
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  /** Resolves every target now and reports the list if it changed. */
  async refresh(): Promise<void> {
    const lists = await Promise.all(this.d.targets.map((t) => this.resolveTarget(t)));
    if (this.stopped) return;
    const addresses = [...new Set(lists.flat())].sort();
    const key = addresses.join(",");
    if (key === this.current) return;
    this.current = key;
    this.d.logger.info({ workers: addresses }, "worker addresses resolved");
    this.d.onAddresses(addresses);
  }

  private schedule(): void {
    if (this.stopped || this.d.refreshMs <= 0 || this.d.targets.every((t) => isIP(splitTarget(t).host) !== 0)) return;
    this.timer = setTimeout(() => {
      void this.refresh().finally(() => this.schedule());
    }, this.d.refreshMs);
    this.timer.unref();
  }

  private async resolveTarget(target: string): Promise<string[]> {
    const { host, port } = splitTarget(target);
    if (isIP(host) !== 0) return [target];
    try {
      const ips = await this.d.resolve(host);
      if (ips.length === 0) throw new Error("no addresses");
      const out = ips.map((ip) => (isIP(ip) === 6 ? `[${ip}]:${port}` : `${ip}:${port}`));
      this.known.set(target, out);
      return out;
    } catch (e) {
      const kept = this.known.get(target) ?? [];
      this.d.logger.warn({ target, err: (e as Error).message, kept }, "worker name did not resolve; keeping its previous addresses");
      return kept;
    }
  }
}

/** Splits host:port or [v6]:port (the config has validated the shape). */
export function splitTarget(target: string): { host: string; port: string } {
  const i = target.lastIndexOf(":");
  const host = target.slice(0, i);
  return { host: host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host, port: target.slice(i + 1) };
}
