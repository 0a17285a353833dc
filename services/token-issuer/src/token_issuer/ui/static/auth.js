// Where the page's bearer token comes from.
//
// Outside dev the host application (MyScanner) gives it, in one of two ways:
//   1. it frames the page and posts {type: "scanner-auth:token", token} to it, from one of the
//      origins in UI_HOST_ORIGINS (the page posts {type: "scanner-auth:ready"} to its parent
//      when it is listening, and {type: "scanner-auth:unauthorised"} when the token stops
//      working, so that the host can post a fresh one); the token is kept in memory only;
//   2. it opens /ui/#token=<JWT>[&next=/scanners/<id>]: the token is moved into this tab's
//      sessionStorage and removed from the address bar and history at once.
// In `scanner-auth dev` the page also offers the demo users (dev/identities.json).

import { uiDocument } from "./api.js";

const STORED = "scanner-auth.bearer";
const DEV_USER = "scanner-auth.dev-user";

const storage = {
  get(key) {
    try { return window.sessionStorage.getItem(key); } catch { return null; }
  },
  set(key, value) {
    try {
      if (value === null) window.sessionStorage.removeItem(key);
      else window.sessionStorage.setItem(key, value);
    } catch { /* storage disabled: memory only */ }
  },
};

/** The claims of a JWT, for display only (the server verifies it). */
export function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = new TextDecoder().decode(Uint8Array.from(atob(part), (c) => c.charCodeAt(0)));
    const body = JSON.parse(json);
    return typeof body === "object" && body !== null ? body : {};
  } catch {
    return {};
  }
}

/**
 * `#token=<JWT>[&next=/scanners/<id>]`: the token, taken out of the address bar and of history
 * at once (call this before anything else, synchronously). Null when there is none.
 */
export function takeTokenFromFragment() {
  if (!location.hash.startsWith("#token=")) return null;
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  const next = params.get("next");
  const route = next && /^\/scanners\/[^/]+$|^\/$/.test(next) ? next : "/";
  history.replaceState(null, "", `${location.pathname}${location.search}#${route}`);
  return token && /^[\w-]+\.[\w-]+\.[\w-]*$/.test(token) ? token : null;
}

export class Session extends EventTarget {
  constructor(config) {
    super();
    this.hostOrigins = Array.isArray(config.host_origins) ? config.host_origins : [];
    this.dev = Boolean(config.dev_identities);
    /** @type {{user_id: string, label: string, display_name: string, email: string, token: string}[]} */
    this.devUsers = [];
    this.token = null;
    this.framed = window.parent !== window;
  }

  /** @param {string|null} fromFragment what takeTokenFromFragment() found */
  async start(fromFragment) {
    if (fromFragment) {
      storage.set(STORED, fromFragment);
      this.token = fromFragment;
    } else {
      this.token = storage.get(STORED);
    }
    if (this.framed) {
      window.addEventListener("message", (event) => this.#onMessage(event));
      this.#tellHost({ type: "scanner-auth:ready" }, "*");
    }
    if (this.dev) {
      try {
        const document = await uiDocument("dev/identities.json");
        this.devUsers = Array.isArray(document.users) ? document.users : [];
      } catch {
        this.devUsers = [];
      }
      const chosen = this.devUsers.find((u) => u.user_id === storage.get(DEV_USER));
      if (chosen && !fromFragment) this.token = chosen.token;
    }
  }

  get devUserId() {
    return this.devUsers.find((u) => u.token === this.token)?.user_id ?? "";
  }

  /** Who the token says the user is (display only). */
  get who() {
    if (!this.token) return null;
    const c = claims(this.token);
    const dev = this.devUsers.find((u) => u.token === this.token);
    return {
      userId: typeof c.sub === "string" ? c.sub : "",
      email: typeof c.email === "string" ? c.email : "",
      name: dev?.display_name ?? (typeof c.email === "string" ? c.email : ""),
    };
  }

  chooseDevUser(userId) {
    const user = this.devUsers.find((u) => u.user_id === userId);
    storage.set(DEV_USER, user ? user.user_id : null);
    storage.set(STORED, null);
    this.#set(user ? user.token : null);
  }

  /** The API refused the token (401): forget it and ask the host for a fresh one. */
  refused() {
    storage.set(STORED, null);
    for (const origin of this.hostOrigins) {
      this.#tellHost({ type: "scanner-auth:unauthorised" }, origin);
    }
  }

  #set(token) {
    this.token = token;
    this.dispatchEvent(new Event("change"));
  }

  #onMessage(event) {
    if (event.source !== window.parent || !this.hostOrigins.includes(event.origin)) return;
    const data = event.data;
    if (!data || data.type !== "scanner-auth:token" || typeof data.token !== "string") return;
    storage.set(STORED, null); // a framed page keeps the host's token in memory only
    this.#set(data.token);
  }

  #tellHost(message, origin) {
    try {
      window.parent.postMessage(message, origin);
    } catch { /* not framed by that origin */ }
  }
}
