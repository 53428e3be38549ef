/**
 * A network namespace joined to this one by a veth pair, so that a worker
 * inside it can have its link to the gateway cut for real (both directions,
 * no RST, no FIN: packets simply stop, as in a partition). Loopback cannot do
 * that: a process on 127.0.0.1 always sees its peer's kernel answer.
 *
 * Needs root (CAP_NET_ADMIN) and `ip` from iproute2. Every namespace is
 * created by create() and removed by remove(); names carry this process's pid
 * so that concurrent harness runs never touch each other's.
 */
import { execFileSync } from "node:child_process";

/** One namespace + veth pair (host side HOST_IP, namespace side NS_IP, a /30). */
export interface Netns {
  /** Namespace name (`ip netns exec NAME ...`). */
  readonly name: string;
  /** Address of the namespace side: what the gateway dials. */
  readonly nsIp: string;
  /** Cuts the link both ways (the namespace side of the veth goes down). */
  cut(): void;
  /** Restores the link. */
  heal(): void;
  /** Deletes the veth pair and the namespace (idempotent). */
  remove(): void;
}

const ip = (...args: string[]): void => {
  execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });
};

/** Whether this process may create namespaces (root + iproute2). */
export function netnsAvailable(): boolean {
  const probe = `chaosprobe${process.pid}`;
  try {
    ip("netns", "add", probe);
    ip("netns", "del", probe);
    return true;
  } catch {
    return false;
  }
}

/** Creates namespace number `k` (0..63) of this process. */
export function createNetns(k: number): Netns {
  if (!(k >= 0 && k < 64)) throw new Error("netns index must be 0..63");
  const tag = `${process.pid % 10000}x${k}`;
  const name = `chaos${tag}`;
  const host = `ch${tag}h`;
  const peer = `ch${tag}n`;
  // 10.231.X.Y/30 per namespace: X from the pid, Y from k (4 addresses each).
  const net = `10.231.${process.pid % 250}.${k * 4}`;
  const base = net.split(".").map(Number);
  const hostIp = `${base[0]}.${base[1]}.${base[2]}.${base[3]! + 1}`;
  const nsIp = `${base[0]}.${base[1]}.${base[2]}.${base[3]! + 2}`;
  let removed = false;
  const remove = (): void => {
    if (removed) return;
    removed = true;
    try {
      ip("link", "del", host);
    } catch {
      /* already gone with the namespace */
    }
    try {
      ip("netns", "del", name);
    } catch {
      /* already gone */
    }
  };
  try {
    ip("netns", "add", name);
    ip("link", "add", host, "type", "veth", "peer", "name", peer);
    ip("link", "set", peer, "netns", name);
    ip("addr", "add", `${hostIp}/30`, "dev", host);
    ip("link", "set", host, "up");
    ip("-n", name, "addr", "add", `${nsIp}/30`, "dev", peer);
    ip("-n", name, "link", "set", peer, "up");
    ip("-n", name, "link", "set", "lo", "up");
  } catch (e) {
    remove();
    throw e;
  }
  return {
    name,
    nsIp,
    cut: () => ip("-n", name, "link", "set", peer, "down"),
    heal: () => ip("-n", name, "link", "set", peer, "up"),
    remove,
  };
}
