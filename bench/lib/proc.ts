/**
 * CPU and memory of server processes, read from /proc/<pid>/stat and
 * /proc/<pid>/status (Linux only), sampled while a load runs.
 */
import { readFileSync } from "node:fs";

const CLK_TCK = 100; // sysconf(_SC_CLK_TCK) is 100 on every Linux we run on.

export interface ProcSnapshot {
  t: number; // performance.now() ms
  cpuSec: number; // utime + stime of all threads
  sysSec: number; // stime alone (kernel: socket syscalls, loopback TCP)
  rssKiB: number;
}

export function snapshot(pid: number): ProcSnapshot | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // comm may contain spaces: fields after the closing paren.
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const utime = Number(rest[11]);
    const stime = Number(rest[12]);
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const m = /VmRSS:\s+(\d+)\s+kB/.exec(status);
    return { t: performance.now(), cpuSec: (utime + stime) / CLK_TCK, sysSec: stime / CLK_TCK, rssKiB: m ? Number(m[1]) : 0 };
  } catch {
    return null;
  }
}

export interface ProcUsage {
  pid: number;
  label: string;
  /** CPU cores used on average over the window (cpu seconds / wall seconds). */
  cores: number;
  cpuSec: number;
  /** Share of cpuSec spent in the kernel. */
  sysShare: number;
  wallSec: number;
  rssStartMiB: number;
  rssPeakMiB: number;
  rssEndMiB: number;
  /** Cores over the steady window when every session is active (set by runLoad). */
  steadyCores?: number | null;
}

/** Samples a set of pids every `everyMs` between start() and stop(). */
export class ProcSampler {
  private first = new Map<number, ProcSnapshot>();
  private last = new Map<number, ProcSnapshot>();
  private peak = new Map<number, number>();
  private series = new Map<number, ProcSnapshot[]>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly pids: { pid: number; label: string }[],
    private readonly everyMs = 500,
  ) {}

  start(): void {
    for (const { pid } of this.pids) {
      const s = snapshot(pid);
      if (s) {
        this.series.set(pid, [s]);
        this.first.set(pid, s);
        this.last.set(pid, s);
        this.peak.set(pid, s.rssKiB);
      }
    }
    this.timer = setInterval(() => this.sample(), this.everyMs);
    this.timer.unref();
  }

  private sample(): void {
    for (const { pid } of this.pids) {
      const s = snapshot(pid);
      if (!s) continue;
      this.series.get(pid)?.push(s);
      this.last.set(pid, s);
      this.peak.set(pid, Math.max(this.peak.get(pid) ?? 0, s.rssKiB));
    }
  }

  /** CPU cores used by `pid` between two times (nearest samples inside the window). */
  coresBetween(pid: number, tA: number, tB: number): number | null {
    const s = (this.series.get(pid) ?? []).filter((x) => x.t >= tA && x.t <= tB);
    if (s.length < 2) return null;
    const a = s[0]!;
    const b = s[s.length - 1]!;
    return (b.cpuSec - a.cpuSec) / ((b.t - a.t) / 1000);
  }

  stop(): ProcUsage[] {
    if (this.timer) clearInterval(this.timer);
    this.sample();
    const out: ProcUsage[] = [];
    for (const { pid, label } of this.pids) {
      const a = this.first.get(pid);
      const b = this.last.get(pid);
      if (!a || !b) continue;
      const wallSec = (b.t - a.t) / 1000;
      const cpuSec = b.cpuSec - a.cpuSec;
      out.push({
        pid,
        label,
        cores: wallSec > 0 ? cpuSec / wallSec : 0,
        cpuSec,
        sysShare: cpuSec > 0 ? (b.sysSec - a.sysSec) / cpuSec : 0,
        wallSec,
        rssStartMiB: a.rssKiB / 1024,
        rssPeakMiB: (this.peak.get(pid) ?? b.rssKiB) / 1024,
        rssEndMiB: b.rssKiB / 1024,
      });
    }
    return out;
  }
}
