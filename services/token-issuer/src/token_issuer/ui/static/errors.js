// One clear sentence for every way a call can fail, in the words of what the user was doing.
import { ApiError } from "./api.js";

const ACTIONS = {
  load: "load this page",
  generate: "generate a code",
  revoke: "revoke the code",
  email: "email the code",
  users: "list who can receive the code",
  deauthorise: "deauthorise the scanner",
};

const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });

/** The email quotas (per code, per recipient, per hour): which one, and when to retry. */
function emailLimited(error) {
  const detail = (error.problem && typeof error.problem.detail === "string") ? error.problem.detail : "";
  const what = detail.includes("recipient")
    ? "Too many codes were emailed to this person in the last hour, so MyScanner did not send this one."
    : "This code was emailed too many times in the last hour, so MyScanner did not send it again.";
  const seconds = error.retryAfter;
  if (seconds === null || seconds === undefined) return `${what} Try again later.`;
  const minutes = Math.ceil(seconds / 60);
  const wait = seconds < 60 ? `${seconds} second${seconds === 1 ? "" : "s"}`
    : `${minutes} minute${minutes === 1 ? "" : "s"}`;
  const at = clock.format(new Date(Date.now() + seconds * 1000));
  return `${what} You can email it again in ${wait} (at ${at}), or copy the code instead.`;
}

/**
 * @param {unknown} error
 * @param {keyof ACTIONS} action
 * @param {{dev?: boolean}} context
 */
export function describe(error, action, context = {}) {
  const doing = ACTIONS[action] || "do that";
  if (!(error instanceof ApiError)) {
    return `Something went wrong in this page and it could not ${doing}. Reload the page and try again.`;
  }
  if (error.kind === "network") {
    return `MyScanner could not be reached, so it could not ${doing}. Check your connection and try again.`;
  }
  if (error.kind === "timeout") {
    return `MyScanner took too long to answer, so it could not ${doing}. Try again in a moment.`;
  }
  const status = error.status;
  switch (status) {
    case 401:
      return context.dev
        ? "Your sign-in is missing or has expired. Choose a demo user again (restarting scanner-auth dev issues new ones)."
        : "Your sign-in has expired or is not valid. Sign in to MyScanner again, then reopen this page.";
    case 403:
      return `You can view this scanner but not manage it, so you cannot ${doing}. An organisation admin or Loadscan support can.`;
    case 404:
      return "This scanner does not exist, was removed, or you do not have access to it.";
    case 409:
      return action === "email"
        ? "There is no active code to email: it was used, revoked or has expired. Generate a new code first."
        : `The scanner changed while you were working, so it could not ${doing}. The page now shows its current state.`;
    case 422:
      return action === "email"
        ? "That person cannot receive the code: they no longer have access to this scanner, or MyScanner has no email address for them. Choose someone else."
        : `MyScanner did not accept the request to ${doing}.`;
    case 429:
      return action === "email" ? emailLimited(error) : `Too many requests: wait a moment, then ${doing} again.`;
    default:
      if (status >= 500) {
        return `MyScanner had a problem and could not ${doing} (error ${status}). Try again in a moment; if it keeps happening, contact Loadscan support.`;
      }
      return `MyScanner answered unexpectedly (error ${status}) and could not ${doing}.`;
  }
}
