// The token-issuer's HTTP API, as the page uses it. Every call carries the bearer token the
// page was given; answers that are not 2xx become an ApiError holding the RFC 9457 problem.

const TIMEOUT_MS = 15000;

export class ApiError extends Error {
  /**
   * @param {"network"|"timeout"|"http"} kind
   * @param {number} status HTTP status, 0 when no answer came
   * @param {{title?: string, detail?: string}|null} problem
   * @param {number|null} retryAfter seconds, from a Retry-After header (429, 503)
   */
  constructor(kind, status, problem, retryAfter = null) {
    super(kind === "http" ? `HTTP ${status}` : kind);
    this.name = "ApiError";
    this.kind = kind;
    this.status = status;
    this.problem = problem;
    this.retryAfter = retryAfter;
  }
}

// Relative to the page, so that a path prefix in front of the service keeps working:
// /ui/ → /v1/…, /token-issuer/ui/ → /token-issuer/v1/…
const base = new URL("../v1/", document.baseURI);
const url = (path) => new URL(path.replace(/^\//, ""), base).href;
const enc = encodeURIComponent;

/** The difference between the server's clock and ours, from the last Date header (ms). */
export let serverClockOffset = 0;

async function call(token, method, path, body) {
  const headers = { Accept: "application/json, application/problem+json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url(path), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
      signal: AbortSignal.timeout(TIMEOUT_MS),
    });
  } catch (error) {
    throw new ApiError(error && error.name === "TimeoutError" ? "timeout" : "network", 0, null);
  }
  const date = Date.parse(response.headers.get("Date") || "");
  if (!Number.isNaN(date)) serverClockOffset = date + 500 - Date.now();
  if (response.ok) {
    return response.status === 204 ? null : response.json();
  }
  let problem = null;
  try {
    problem = await response.json();
  } catch {
    problem = null;
  }
  const retryAfter = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  throw new ApiError("http", response.status, problem,
    Number.isFinite(retryAfter) && retryAfter >= 0 ? retryAfter : null);
}

/** A client for one bearer token. */
export function client(token) {
  const scanner = (id) => `scanners/${enc(id)}`;
  return {
    listScanners: () => call(token, "GET", "scanners"),
    /** The latest token, or null when none was ever issued (404 on a visible scanner). */
    latestToken: async (id) => {
      try {
        return await call(token, "GET", `${scanner(id)}/authorisation-token`);
      } catch (error) {
        if (error instanceof ApiError && error.status === 404) return null;
        throw error;
      }
    },
    generate: (id) => call(token, "POST", `${scanner(id)}/authorisation-token`),
    revoke: (id) => call(token, "DELETE", `${scanner(id)}/authorisation-token`),
    email: (id, recipientUserId) =>
      call(token, "POST", `${scanner(id)}/authorisation-token/email`,
        recipientUserId ? { recipient_user_id: recipientUserId } : {}),
    users: (id) => call(token, "GET", `${scanner(id)}/users`),
    authorisation: (id) => call(token, "GET", `${scanner(id)}/authorisation`),
    deauthorise: (id) => call(token, "DELETE", `${scanner(id)}/authorisation`),
  };
}

/** The page's own documents under /ui/ (no bearer token). */
export async function uiDocument(name) {
  const response = await fetch(new URL(name, document.baseURI).href, {
    cache: "no-store", credentials: "omit", signal: AbortSignal.timeout(TIMEOUT_MS),
  });
  if (!response.ok) throw new ApiError("http", response.status, null);
  return response.json();
}
