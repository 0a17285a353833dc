// The reference MyScanner page for scanner authorisation: the scanners a user can view, a
// scanner's properties page with its current code, and the "Authorise scanner" dialog.
// It is a plain client of the token-issuer API. The code lives only in this page's memory:
// it is never logged, stored or put in a URL.

import { ApiError, client, serverClockOffset, uiDocument } from "./api.js";
import { Session, claims, takeTokenFromFragment } from "./auth.js";
import { h, icons, trapFocus } from "./dom.js";
import { describe } from "./errors.js";
import {
  AUTHORISATION, TOKEN, formatDateTime, formatShort, groupCode, timeLeft,
} from "./format.js";

const POLL_MS = 3000; // how often an active code's scanner is checked for authorisation

const $ = (id) => document.getElementById(id);
const main = $("main");
const authDialog = $("authorise-dialog");
const confirmDialog = $("confirm-dialog");

/** @type {Session} */
let session;
let api = client(null);
let renderSeq = 0;
let moveFocus = false; // after a navigation, focus goes to the new page's heading

/**
 * The scanner page's state; null elsewhere. Leaving the page drops it, code included.
 * @type {null | {id: string, scanner: any, token: any, authorisation: any, users: any[]|null,
 *   usersError: string|null, recipient: string, timer: number, lastPoll: number, polling: boolean,
 *   expiredCheck: string|null, notice: {text: string, tone: string}|null,
 *   dialogNotice: {text: string, tone: string}|null, pageError: string|null,
 *   pollTrouble: number, busy: boolean}}
 */
let page = null;

const now = () => Date.now() + serverClockOffset;

function announce(text) {
  const announcer = $("announcer");
  announcer.textContent = "";
  window.setTimeout(() => { announcer.textContent = text; }, 60);
}

function messageFor(error, action) {
  if (error instanceof ApiError && error.status === 401) session.refused();
  return describe(error, action, { dev: session.dev });
}

// ------------------------------------------------------------------------------- small parts

function badge({ label, tone }) {
  return h("span", { class: `badge ${tone}` }, h("span", { class: "dot", "aria-hidden": "true" }), label);
}

function notice(n, id) {
  if (!n) return h("p", { id, class: "notice", role: "status" });
  return h("p", { id, class: `notice ${n.tone}`, role: "status" },
    n.tone === "good" ? icons.check() : null, h("span", {}, n.text));
}

/** Trying again helps with an outage, not with a refusal. */
const retryable = (error) => !(error instanceof ApiError && [401, 403, 404].includes(error.status));

function errorBox(text, retry) {
  return h("div", { class: "message error", role: "alert" },
    h("p", {}, text),
    retry ? h("button", { type: "button", class: "button", onclick: retry }, "Try again") : null);
}

function loading(text) {
  return h("p", { class: "loading", role: "status" }, h("span", { class: "spinner", "aria-hidden": "true" }), text);
}

function heading(text) {
  return h("h1", { tabindex: "-1" }, text);
}

function setMain(...children) {
  const focusedId = main.contains(document.activeElement) ? document.activeElement.id : "";
  main.replaceChildren(...children.flat().filter(Boolean));
  if (moveFocus) {
    moveFocus = false;
    main.querySelector("h1")?.focus();
  } else if (focusedId) {
    $(focusedId)?.focus();
  }
}

/** The code, large: groups of four, and spelt out for screen readers. */
function codeDisplay(code, id) {
  const grouped = groupCode(code);
  const groups = grouped.split("-");
  const visual = h("p", { class: "code", id, "data-code": "", "aria-hidden": "true" });
  groups.forEach((group, i) => {
    if (i > 0) visual.append(h("span", { class: "code-dash" }, "-"));
    visual.append(h("span", { class: "code-group" }, group));
  });
  const spoken = groups.map((g) => g.split("").join(" ")).join(", ");
  return [visual, h("p", { class: "visually-hidden" }, `Code: ${spoken}`)];
}

function expiryLine(token) {
  return h("p", { class: "expiry" },
    h("span", {}, "Valid until ", h("time", { datetime: token.expires_at }, formatDateTime(token.expires_at))),
    h("span", { class: "time-left", "data-expires": token.expires_at },
      timeLeft(Date.parse(token.expires_at) - now())));
}

function updateCountdowns() {
  for (const el of document.querySelectorAll("[data-expires]")) {
    const text = timeLeft(Date.parse(el.dataset.expires) - now());
    if (el.textContent !== text) el.textContent = text;
  }
}

function pastToken(token) {
  if (!token) return "No code has been generated for this scanner yet.";
  switch (token.status) {
    case "redeemed":
      return `The last code was entered on the scanner on ${formatShort(token.redeemed_at ?? token.expires_at)}.`;
    case "expired":
      return `The last code expired on ${formatShort(token.expires_at)}, unused.`;
    case "revoked":
      return "The last code was revoked before it was used.";
    default:
      return "There is no active code.";
  }
}

const isActive = (token) => Boolean(token && token.status === "active" && token.code);

// ------------------------------------------------------------------------------- identity

function renderIdentity() {
  const box = $("identity");
  if (session.dev && session.devUsers.length) {
    const select = h("select", {
      id: "acting-as",
      onchange: (event) => session.chooseDevUser(event.target.value),
    },
    h("option", { value: "" }, "Choose a demo user…"),
    session.devUsers.map((u) => h("option", { value: u.user_id, selected: u.user_id === session.devUserId },
      `${u.display_name} (${u.label})`)));
    box.replaceChildren(h("label", { for: "acting-as", class: "identity-label" }, "Acting as"), select,
      h("span", { class: "dev-tag", title: "scanner-auth dev: demo users" }, "dev"));
    return;
  }
  const who = session.who;
  box.replaceChildren(who ? h("span", { class: "identity-name" }, who.name || who.userId) : "");
}

function showSignIn() {
  document.title = "Sign in · MyScanner";
  if (session.dev && session.devUsers.length) {
    setMain(
      heading("Choose a demo user"),
      h("p", { class: "muted" },
        "scanner-auth dev runs a demo directory. Act as one of its users to see what they see."),
      h("ul", { class: "people" }, session.devUsers.map((u) => h("li", {},
        h("button", { type: "button", class: "person", onclick: () => session.chooseDevUser(u.user_id) },
          h("span", { class: "person-name" }, u.display_name),
          h("span", { class: "muted" }, `${u.label} · ${u.email}`))))),
    );
    return;
  }
  setMain(
    heading("Sign in to MyScanner"),
    h("div", { class: "card" },
      h("p", {}, session.framed
        ? "Waiting for MyScanner to sign you in…"
        : "This page shows your scanners once MyScanner has signed you in. Open it from MyScanner."),
    ),
  );
}

// ------------------------------------------------------------------------------- routing

function currentRoute() {
  const match = location.hash.match(/^#\/scanners\/([^/?#]+)$/);
  return match ? { name: "scanner", id: decodeURIComponent(match[1]) } : { name: "list" };
}

function leavePage() {
  if (page) window.clearInterval(page.timer);
  page = null;
  for (const dialog of [confirmDialog, authDialog]) {
    if (dialog.open) dialog.close();
  }
  $("dialog-state").replaceChildren();
}

async function render() {
  const seq = ++renderSeq;
  leavePage();
  if (!session.token) {
    showSignIn();
    return;
  }
  api = client(session.token);
  const route = currentRoute();
  if (route.name === "scanner") await showScanner(route.id, seq);
  else await showList(seq);
}

// ------------------------------------------------------------------------------- the list

async function showList(seq) {
  document.title = "Scanners · MyScanner";
  setMain(heading("Scanners"), loading("Loading scanners…"));
  let scanners;
  try {
    scanners = await api.listScanners();
  } catch (error) {
    if (seq === renderSeq) {
      setMain(h("div", { class: "page-head" }, heading("Scanners")),
        errorBox(messageFor(error, "load"), retryable(error) ? render : null));
    }
    return;
  }
  if (seq !== renderSeq) return;
  const orgs = [...new Set(scanners.map((s) => s.org_id))];
  const content = [h("div", { class: "page-head" }, heading("Scanners"))];
  if (scanners.length === 0) {
    content.push(h("div", { class: "card empty" },
      h("p", {}, "You do not have access to any scanner yet."),
      h("p", { class: "muted" }, "An organisation admin can give you access to your organisation's scanners.")));
  } else {
    const count = `${scanners.length} scanner${scanners.length === 1 ? "" : "s"}`;
    content.push(h("p", { class: "muted summary" },
      orgs.length > 1 ? `${count} in ${orgs.length} organisations` : `${count} you can view`));
    for (const org of orgs) {
      const mine = scanners.filter((s) => s.org_id === org);
      if (orgs.length > 1) content.push(h("h2", { class: "org" }, org));
      content.push(h("ul", { class: "scanner-list", "aria-label": orgs.length > 1 ? `Scanners of ${org}` : "Scanners" },
        mine.map(scannerRow)));
    }
  }
  setMain(content);
}

function scannerRow(s) {
  const active = s.token_status === "active" && s.token_expires_at;
  return h("li", {},
    h("a", { class: "scanner-row", href: `#/scanners/${encodeURIComponent(s.scanner_id)}` },
      h("span", { class: "scanner-main" },
        h("span", { class: "scanner-name" }, s.name),
        h("span", { class: "muted" }, `${s.serial_number ?? "No serial number"} · ${s.model}`)),
      h("span", { class: "badges" },
        badge(AUTHORISATION[s.authorisation_status] ?? AUTHORISATION.unauthorised),
        active ? badge({ ...TOKEN.active, label: `Code active · ${timeLeft(Date.parse(s.token_expires_at) - now())}` }) : null),
      h("span", { class: "chevron" }, icons.chevron())));
}

// ------------------------------------------------------------------------------- the scanner page

async function showScanner(id, seq) {
  document.title = "Scanner · MyScanner";
  setMain(loading("Loading scanner…"));
  const p = {
    id, scanner: null, token: null, authorisation: null, users: null, usersError: null, recipient: "",
    timer: 0, lastPoll: performance.now(), polling: false, expiredCheck: null,
    notice: null, dialogNotice: null, pageError: null, pollTrouble: 0, busy: false,
  };
  page = p;
  try {
    await refresh(p);
  } catch (error) {
    if (p !== page || seq !== renderSeq) return;
    setMain(
      h("nav", { class: "breadcrumb", "aria-label": "Breadcrumb" }, h("a", { href: "#/" }, "Scanners")),
      h("div", { class: "page-head" }, heading("Scanner")),
      errorBox(messageFor(error, "load"), retryable(error) ? render : null));
    return;
  }
  if (p !== page) return;
  renderScanner();
  p.timer = window.setInterval(() => tick(p), 1000);
}

/** Everything the page shows, from the API. */
async function refresh(p) {
  const [scanners, token, authorisation] = await Promise.all([
    api.listScanners(), api.latestToken(p.id), api.authorisation(p.id),
  ]);
  const scanner = scanners.find((s) => s.scanner_id === p.id);
  if (!scanner) throw new ApiError("http", 404, null);
  Object.assign(p, { scanner, token, authorisation });
}

function renderScanner() {
  const p = page;
  const s = p.scanner;
  document.title = `${s.name} · Scanners · MyScanner`;
  setMain(
    h("nav", { class: "breadcrumb", "aria-label": "Breadcrumb" },
      h("a", { href: "#/" }, "Scanners"),
      h("span", { class: "crumb-sep", "aria-hidden": "true" }, "/"),
      h("span", { "aria-current": "page" }, s.name)),
    h("div", { class: "page-head" }, heading(s.name), s.can_manage ? cogMenu(p) : null),
    p.pageError ? errorBox(p.pageError) : null,
    h("div", { class: "columns" }, propertiesCard(p), codeCard(p)),
  );
  if (authDialog.open) renderDialog();
}

function propertiesCard(p) {
  const s = p.scanner;
  const a = p.authorisation;
  const row = (term, ...value) => [h("dt", {}, term), h("dd", {}, ...value)];
  return h("section", { class: "card", "aria-labelledby": "properties-title" },
    h("h2", { id: "properties-title" }, "Properties"),
    h("dl", { class: "properties" },
      row("Name", s.name),
      row("Serial number", s.serial_number ?? "—"),
      row("Model", s.model),
      row("Authorisation", h("span", { id: "authorisation-status" },
        badge(AUTHORISATION[a.status] ?? AUTHORISATION.unauthorised)),
      a.status === "authorised" && a.authorised_at
        ? h("span", { class: "muted since" }, ` since ${formatShort(a.authorised_at)}`) : null),
    ));
}

function codeCard(p) {
  const t = p.token;
  const s = p.scanner;
  const body = [h("h2", { id: "code-title" }, "Authorisation code")];
  if (isActive(t)) {
    body.push(
      h("p", { class: "muted" }, "Enter this code on the scanner to authorise it. It works once."),
      codeDisplay(t.code, "page-code"),
      expiryLine(t),
      h("div", { class: "actions" },
        h("button", { type: "button", class: "button primary", id: "page-copy", onclick: () => copyCode("page") },
          icons.copy(), "Copy code"),
        h("button", { type: "button", class: "button", id: "page-email-me", onclick: emailMe, "aria-disabled": p.busy ? "true" : null },
          icons.mail(), "Email me the code")),
      notice(p.notice, "page-notice"),
    );
  } else {
    body.push(h("p", { class: "state" }, pastToken(t)));
    if (p.authorisation.status === "authorised") {
      body.push(h("p", { class: "muted" }, "The scanner is authorised and may upload scan data."));
    } else {
      body.push(h("p", { class: "muted" }, s.can_manage
        ? "To authorise the scanner, open the cog menu and choose “Authorise scanner”."
        : "An organisation admin or Loadscan support can generate a code. It will appear here for you to enter on the scanner."));
    }
    body.push(notice(p.notice, "page-notice"));
  }
  if (p.pollTrouble >= 3) {
    body.push(h("p", { class: "notice warn" }, "Checking the scanner's status is failing; still trying…"));
  }
  return h("section", { class: "card code-card", "aria-labelledby": "code-title" }, body);
}

// ------------------------------------------------------------------------------- the cog menu

function cogMenu(p) {
  const button = h("button", {
    type: "button", class: "icon-button cog", id: "scanner-actions",
    "aria-haspopup": "menu", "aria-expanded": "false", "aria-controls": "scanner-menu",
    "aria-label": "Scanner actions",
  }, icons.cog());
  const item = (id, label, action) => h("li", { role: "none" },
    h("button", { type: "button", role: "menuitem", id, tabindex: "-1", onclick: () => { close(); action(); } }, label));
  const menu = h("ul", { class: "menu", role: "menu", id: "scanner-menu", "aria-labelledby": "scanner-actions", hidden: true },
    item("menu-authorise", "Authorise scanner…", openAuthoriseDialog),
    p.authorisation.status === "authorised" ? item("menu-deauthorise", "Deauthorise scanner…", deauthorise) : null);
  const items = () => [...menu.querySelectorAll("[role=menuitem]")];
  const onOutside = (event) => {
    if (!wrap.contains(event.target)) close(false);
  };
  function open(focusLast = false) {
    menu.hidden = false;
    button.setAttribute("aria-expanded", "true");
    const list = items();
    (focusLast ? list[list.length - 1] : list[0])?.focus();
    document.addEventListener("pointerdown", onOutside, true);
  }
  function close(refocus = true) {
    if (menu.hidden) return;
    menu.hidden = true;
    button.setAttribute("aria-expanded", "false");
    document.removeEventListener("pointerdown", onOutside, true);
    if (refocus) button.focus();
  }
  button.addEventListener("click", () => (menu.hidden ? open() : close()));
  button.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      open(event.key === "ArrowUp");
    }
  });
  menu.addEventListener("keydown", (event) => {
    const list = items();
    const at = list.indexOf(document.activeElement);
    const go = (i) => list[(i + list.length) % list.length].focus();
    switch (event.key) {
      case "ArrowDown": event.preventDefault(); go(at + 1); break;
      case "ArrowUp": event.preventDefault(); go(at - 1); break;
      case "Home": event.preventDefault(); go(0); break;
      case "End": event.preventDefault(); go(list.length - 1); break;
      case "Escape": event.preventDefault(); close(); break;
      case "Tab": close(false); break;
      default:
    }
  });
  const wrap = h("div", { class: "menu-wrap" }, button, menu);
  return wrap;
}

// ------------------------------------------------------------------------------- the dialog

function openAuthoriseDialog() {
  const p = page;
  if (!p || !p.scanner.can_manage) return;
  p.dialogNotice = null;
  hideDialogError();
  renderDialog();
  authDialog.showModal();
  focusIn(authDialog, ["dialog-copy", "dialog-generate"]);
  if (p.users === null) loadUsers(p);
}

authDialog.addEventListener("close", () => {
  hideDialogError();
  if (page) {
    page.dialogNotice = null;
    $("scanner-actions")?.focus();
  }
});
authDialog.querySelector("[data-close]").addEventListener("click", () => authDialog.close());

function focusIn(root, ids) {
  for (const id of ids) {
    const el = $(id);
    if (el && root.contains(el) && !el.disabled) {
      el.focus();
      return;
    }
  }
}

function showDialogError(text) {
  const box = $("dialog-error");
  box.textContent = text;
  box.hidden = false;
}

function hideDialogError() {
  const box = $("dialog-error");
  box.hidden = true;
  box.textContent = "";
}

async function loadUsers(p) {
  try {
    const users = await api.users(p.id);
    if (p !== page) return;
    p.users = users;
    p.usersError = null;
  } catch (error) {
    if (p !== page) return;
    p.users = [];
    p.usersError = messageFor(error, "users");
  }
  if (authDialog.open) renderDialog();
}

function renderDialog() {
  const p = page;
  const s = p.scanner;
  const t = p.token;
  const focusedId = authDialog.contains(document.activeElement) ? document.activeElement.id : "";
  $("authorise-intro").textContent = `${s.name} · serial number ${s.serial_number ?? "unknown"} · ${s.model}`;
  const parts = [];
  if (isActive(t)) {
    parts.push(
      h("div", { class: "code-panel" },
        h("p", { class: "code-label" }, "Authorisation code"),
        codeDisplay(t.code, "dialog-code"),
        expiryLine(t)),
      h("div", { class: "actions" },
        h("button", { type: "button", class: "button primary", id: "dialog-copy", onclick: () => copyCode("dialog") },
          icons.copy(), "Copy to clipboard")),
      notice(p.dialogNotice, "dialog-notice"),
      emailForm(p),
      h("div", { class: "actions secondary-actions" },
        h("button", { type: "button", class: "button danger-outline", id: "dialog-revoke", onclick: revoke, "aria-disabled": p.busy ? "true" : null }, "Revoke code"),
        h("button", { type: "button", class: "button", id: "dialog-generate", onclick: generate, "aria-disabled": p.busy ? "true" : null }, "Generate new code")),
    );
  } else {
    const ttl = t ? Date.parse(t.expires_at) - Date.parse(t.issued_at) : 3 * 86400000;
    parts.push(
      h("div", { class: "empty-code" },
        icons.key(),
        h("p", { class: "state" }, pastToken(t)),
        h("p", { class: "muted" }, `A new code is valid for ${validity(ttl)} and can be entered on the scanner once. You can then email it and copy it.`),
        p.authorisation.status === "authorised"
          ? h("p", { class: "muted" }, "This scanner is already authorised: entering a new code replaces its credential.")
          : null),
      notice(p.dialogNotice, "dialog-notice"),
      h("div", { class: "actions" },
        h("button", { type: "button", class: "button primary", id: "dialog-generate", onclick: generate, "aria-disabled": p.busy ? "true" : null },
          p.busy ? "Generating…" : "Generate code")),
    );
  }
  $("dialog-state").replaceChildren(...parts);
  $("dialog-state").setAttribute("aria-busy", p.busy ? "true" : "false");
  if (focusedId && $(focusedId)) $(focusedId).focus();
}

function validity(ms) {
  const hours = Math.round(ms / 3600000);
  if (hours >= 24 && hours % 24 === 0) return `${hours / 24} day${hours === 24 ? "" : "s"}`;
  if (hours >= 1) return `${hours} hour${hours === 1 ? "" : "s"}`;
  return `${Math.max(1, Math.round(ms / 60000))} minutes`;
}

function emailForm(p) {
  const me = session.who;
  const options = [h("option", { value: "" }, `Me${me && me.email ? ` (${me.email})` : ""}`)];
  let chosen = "";
  if (p.users === null) {
    options.push(h("option", { value: "", disabled: true }, "Loading people…"));
  } else {
    for (const u of p.users) {
      if (me && u.user_id === me.userId) continue;
      if (u.user_id === p.recipient) chosen = u.user_id;
      options.push(h("option", { value: u.user_id, selected: u.user_id === p.recipient },
        `${u.display_name} (${u.email})`));
    }
  }
  const select = h("select", {
    id: "recipient", name: "recipient", "aria-describedby": "recipient-help",
    onchange: (event) => { p.recipient = event.target.value; },
  }, options);
  select.value = chosen; // the choice survives the dialog being redrawn
  return h("form", {
    class: "email-form",
    onsubmit: (event) => {
      event.preventDefault();
      sendEmail(select.value);
    },
  },
  h("label", { for: "recipient" }, "Email the code to"),
  h("div", { class: "inline" },
    select,
    h("button", { type: "submit", class: "button", id: "dialog-send", "aria-disabled": p.busy ? "true" : null }, icons.mail(), "Send")),
  h("p", { id: "recipient-help", class: "muted small" },
    p.usersError ?? "Anyone who can view this scanner. The email holds the code and how to enter it."));
}

// ------------------------------------------------------------------------------- actions

async function act(p, action, work) {
  p.busy = true;
  hideDialogError();
  renderScanner();
  try {
    await work();
  } catch (error) {
    if (p !== page) return;
    showDialogError(messageFor(error, action));
    // The state may have moved on (another manager, the scanner, expiry): show what it is now.
    if (error instanceof ApiError && [403, 404, 409, 422].includes(error.status)) {
      try { await refresh(p); } catch { /* keep what we have */ }
    }
  } finally {
    if (p === page) {
      p.busy = false;
      renderScanner();
    }
  }
}

// While a request is on its way, buttons are aria-disabled (they keep the focus) and inert.
const idle = () => page !== null && !page.busy;

async function generate() {
  if (!idle()) return;
  const p = page;
  if (isActive(p.token)) {
    const replace = await confirmAction({
      title: "Replace the active code?",
      message: "The current code stops working at once. Whoever is about to enter it on the scanner will need the new one.",
      ok: "Replace code", cancel: "Keep current code", danger: true,
    });
    if (!replace || p !== page) return;
  }
  await act(p, "generate", async () => {
    const token = await api.generate(p.id);
    if (p !== page) return;
    p.token = token;
    p.expiredCheck = null;
    p.notice = null;
    p.dialogNotice = { tone: "good", text: `New code generated, valid until ${formatDateTime(token.expires_at)}.` };
    announce("New code generated.");
  });
  focusIn(authDialog, ["dialog-copy", "dialog-generate"]);
}

async function revoke() {
  if (!idle()) return;
  const p = page;
  const ok = await confirmAction({
    title: "Revoke this code?",
    message: "It stops working at once and cannot be entered on the scanner. The scanner's authorisation does not change.",
    ok: "Revoke code", danger: true,
  });
  if (!ok || p !== page) return;
  await act(p, "revoke", async () => {
    await api.revoke(p.id);
    if (p !== page) return;
    p.token = await api.latestToken(p.id);
    p.dialogNotice = { tone: "good", text: "The code was revoked." };
    announce("The code was revoked.");
  });
  focusIn(authDialog, ["dialog-generate"]);
}

async function deauthorise() {
  if (!idle()) return;
  const p = page;
  const ok = await confirmAction({
    title: `Deauthorise ${p.scanner.name}?`,
    message: "Its credential stops working at once: it cannot upload scan data until it is authorised again with a new code.",
    ok: "Deauthorise", danger: true,
  });
  if (!ok || p !== page) return;
  p.busy = true;
  try {
    await api.deauthorise(p.id);
    if (p !== page) return;
    p.authorisation = { ...p.authorisation, status: "unauthorised", authorised_at: null };
    p.notice = { tone: "good", text: `${p.scanner.name} was deauthorised.` };
    p.pageError = null;
    announce(`${p.scanner.name} was deauthorised.`);
  } catch (error) {
    if (p === page) p.pageError = messageFor(error, "deauthorise");
  } finally {
    if (p === page) {
      p.busy = false;
      renderScanner();
      $("scanner-actions")?.focus();
    }
  }
}

async function sendEmail(recipientId) {
  if (!idle()) return;
  const p = page;
  const chosen = p.users?.find((u) => u.user_id === recipientId);
  await act(p, "email", async () => {
    await api.email(p.id, recipientId || null);
    if (p !== page) return;
    const to = chosen ? `${chosen.display_name} (${chosen.email})` : "you";
    p.dialogNotice = { tone: "good", text: `Email on its way to ${to}.` };
    announce(`Email on its way to ${to}.`);
  });
}

async function emailMe() {
  if (!idle()) return;
  const p = page;
  p.busy = true;
  p.notice = null;
  renderScanner();
  try {
    await api.email(p.id, null);
    if (p !== page) return;
    const me = session.who;
    p.notice = { tone: "good", text: `Email on its way to you${me && me.email ? ` (${me.email})` : ""}.` };
  } catch (error) {
    if (p !== page) return;
    p.notice = { tone: "bad", text: messageFor(error, "email") };
    if (error instanceof ApiError && error.status === 409) {
      try { await refresh(p); } catch { /* keep what we have */ }
    }
  } finally {
    if (p === page) {
      p.busy = false;
      renderScanner();
    }
  }
}

async function copyCode(where) {
  const p = page;
  const code = p && isActive(p.token) ? groupCode(p.token.code) : null;
  if (!code) return;
  const key = where === "dialog" ? "dialogNotice" : "notice";
  try {
    await navigator.clipboard.writeText(code);
    p[key] = { tone: "good", text: "Code copied to the clipboard." };
  } catch {
    p[key] = { tone: "bad", text: "This browser did not allow copying. The code is selected: copy it with Ctrl+C (⌘C on a Mac)." };
  }
  if (p !== page) return;
  renderScanner();
  if (p[key].tone === "bad") {
    const codeEl = $(where === "dialog" ? "dialog-code" : "page-code");
    if (codeEl) window.getSelection()?.selectAllChildren(codeEl);
  }
}

// ------------------------------------------------------------------------------- confirmation

function confirmAction({ title, message, ok, cancel = "Cancel", danger = false }) {
  return new Promise((resolve) => {
    const previous = document.activeElement;
    const okButton = $("confirm-ok");
    const cancelButton = $("confirm-cancel");
    $("confirm-title").textContent = title;
    $("confirm-message").textContent = message;
    okButton.textContent = ok;
    okButton.className = danger ? "button danger" : "button primary";
    cancelButton.textContent = cancel;
    const finish = (answer) => {
      okButton.onclick = null;
      cancelButton.onclick = null;
      confirmDialog.oncancel = null;
      if (confirmDialog.open) confirmDialog.close();
      if (previous instanceof HTMLElement && previous.isConnected) previous.focus();
      resolve(answer);
    };
    okButton.onclick = () => finish(true);
    cancelButton.onclick = () => finish(false);
    confirmDialog.oncancel = (event) => {
      event.preventDefault();
      finish(false);
    };
    confirmDialog.showModal();
    cancelButton.focus(); // the safe choice is the default one
  });
}

// ------------------------------------------------------------------------------- following

async function tick(p) {
  if (p !== page) return;
  updateCountdowns();
  const t = p.token;
  if (!isActive(t)) return;
  if (Date.parse(t.expires_at) <= now()) {
    if (p.expiredCheck === t.token_id) return;
    p.expiredCheck = t.token_id;
    try {
      p.token = await api.latestToken(p.id);
    } catch {
      p.token = { ...t, status: "expired", code: null };
    }
    if (p === page) renderScanner();
    return;
  }
  if (p.polling || document.hidden || performance.now() - p.lastPoll < POLL_MS) return;
  p.polling = true;
  p.lastPoll = performance.now();
  try {
    const a = await api.authorisation(p.id);
    if (p !== page) return;
    const trouble = p.pollTrouble;
    p.pollTrouble = 0;
    if (a.status !== p.authorisation.status || a.authorised_at !== p.authorisation.authorised_at) {
      p.authorisation = a;
      p.token = await api.latestToken(p.id);
      if (p !== page) return;
      if (a.status === "authorised") {
        p.notice = { tone: "good", text: `${p.scanner.name} is now authorised.` };
        p.dialogNotice = p.notice;
        announce(`${p.scanner.name} is now authorised.`);
      }
      renderScanner();
    } else if (trouble >= 3) {
      renderScanner();
    }
  } catch (error) {
    if (p !== page) return;
    if (error instanceof ApiError && [401, 403, 404].includes(error.status)) {
      p.pageError = messageFor(error, "load");
      p.token = null;
      window.clearInterval(p.timer);
      renderScanner();
    } else {
      p.pollTrouble += 1;
      if (p.pollTrouble === 3) renderScanner();
    }
  } finally {
    p.polling = false;
  }
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && page) page.lastPoll = 0;
});

// ------------------------------------------------------------------------------- start

/**
 * A `#token=` link signs in as whoever's token it carries: anyone can make one with their own
 * token and send it. Ask first, naming the account (from the token's claims: the server
 * verifies them, so a forged name would not be accepted), and sign in only on "Sign in".
 */
async function confirmLinkSignIn(token) {
  const c = claims(token);
  const text = (value) => (typeof value === "string" && value ? value : "");
  const user = text(c.email) || text(c.sub) || "an unknown user";
  const org = text(c.org_id) || "an unknown organisation";
  const id = text(c.email) && text(c.sub) ? ` (user ${text(c.sub)})` : "";
  return confirmAction({
    title: "Sign in from this link?",
    message: `This link signs you in as ${user}${id} from organisation ${org}. ` +
      "Sign in only if you opened it yourself from MyScanner and this is your account: " +
      "someone else's link would show you their scanners, and what you do would be done as them.",
    ok: `Sign in as ${user}`,
    cancel: "Don't sign in",
  });
}

async function boot() {
  let fromFragment = takeTokenFromFragment(); // first: out of the address bar at once
  let config = { host_origins: [], dev_identities: false };
  try {
    config = await uiDocument("config.json");
  } catch { /* the defaults: no host origins, no dev identities */ }
  session = new Session(config);
  trapFocus(authDialog);
  trapFocus(confirmDialog);
  if (fromFragment && !(await confirmLinkSignIn(fromFragment))) fromFragment = null;
  await session.start(fromFragment);
  session.addEventListener("change", () => {
    renderIdentity();
    moveFocus = true;
    render();
  });
  window.addEventListener("hashchange", () => {
    moveFocus = true;
    render();
  });
  renderIdentity();
  await render();
  document.documentElement.dataset.ready = "true";
}

boot();
