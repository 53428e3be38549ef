/**
 * The browser page (gateway/ui/): plain static files, served from memory at
 * /ui/ on the gateway's own port; a browser's GET / is redirected there.
 *
 * Nothing is built: the page is hand-written HTML, CSS and ES modules (the
 * AudioWorklet included), so the gateway serves exactly the files in the
 * repository, with no CDN and no bundler. They are read once at start (a few
 * kilobytes), so a request never touches the disk and a missing file fails
 * the start instead of a later request.
 */
import { readdirSync, readFileSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";

/** Where the page's files live: gateway/ui next to gateway/src (dist/gateway/ui in the image). */
export const DEFAULT_UI_DIR = fileURLToPath(new URL("../ui/", import.meta.url));

/** The URL prefix of the page. */
export const UI_PREFIX = "/ui/";

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
};

/**
 * Same-origin scripts only; connect-src also allows other ws(s) servers
 * because the page lets its user type another gateway's address.
 */
const CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; media-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

interface Asset {
  body: Buffer;
  type: string;
}

/** The page's files, ready to serve. */
export class UiSite {
  private readonly assets = new Map<string, Asset>();

  /** Reads every file of `dir` (flat; index.html required). */
  constructor(dir: string) {
    for (const name of readdirSync(dir)) {
      const type = TYPES[path.extname(name)];
      if (type === undefined) continue;
      this.assets.set(name, { body: readFileSync(path.join(dir, name)), type });
    }
    if (!this.assets.has("index.html")) throw new Error(`the page's index.html is missing in ${dir}`);
  }

  /**
   * Serves GET/HEAD of `/` (redirect), `/ui` and `/ui/<file>`; returns false
   * for every other request so that the caller routes it.
   */
  handle(req: IncomingMessage, res: ServerResponse, pathname: string): boolean {
    if (req.method !== "GET" && req.method !== "HEAD") return false;
    if (pathname === "/" || pathname === "/ui") {
      // Relative, so that a proxy mounting the gateway under a prefix keeps working; the
      // query (a ?token= for the page) is kept.
      const q = (req.url ?? "").indexOf("?");
      res.writeHead(302, { Location: `ui/${q >= 0 ? (req.url ?? "").slice(q) : ""}`, "Content-Length": 0 });
      res.end();
      return true;
    }
    if (!pathname.startsWith(UI_PREFIX)) return false;
    const name = pathname.slice(UI_PREFIX.length) || "index.html";
    const asset = this.assets.get(name);
    if (asset === undefined) {
      const body = "not found\n";
      res.writeHead(404, { "Content-Type": "text/plain; charset=utf-8", "Content-Length": Buffer.byteLength(body) });
      res.end(req.method === "HEAD" ? undefined : body);
      return true;
    }
    res.writeHead(200, {
      "Content-Type": asset.type,
      "Content-Length": asset.body.length,
      // Small files that change with the gateway's version: revalidate rather than go stale.
      "Cache-Control": "no-cache",
      "X-Content-Type-Options": "nosniff",
      "Content-Security-Policy": CSP,
      "Referrer-Policy": "no-referrer",
    });
    res.end(req.method === "HEAD" ? undefined : asset.body);
    return true;
  }
}
