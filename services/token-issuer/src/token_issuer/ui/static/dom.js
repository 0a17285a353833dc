// Building DOM without HTML strings (the page runs under Trusted Types: no HTML strings at all).

/**
 * h("button", {class: "button", onclick: f, "aria-label": "Close"}, "text", child, …)
 * Attributes whose value is null, undefined or false are left out; true sets an empty one.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  append(el, children);
  return el;
}

function setProps(el, props) {
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "value" || key === "selected" || key === "disabled") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

const SVG = "http://www.w3.org/2000/svg";

function svg(viewBox, ...shapes) {
  const el = document.createElementNS(SVG, "svg");
  el.setAttribute("viewBox", viewBox);
  el.setAttribute("aria-hidden", "true");
  el.setAttribute("focusable", "false");
  for (const [name, attrs] of shapes) {
    const shape = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) shape.setAttribute(k, v);
    el.append(shape);
  }
  return el;
}

export const icons = {
  cog: () => svg("0 0 24 24",
    ["circle", { cx: 12, cy: 12, r: 7.4, fill: "none", stroke: "currentColor",
      "stroke-width": 3.4, "stroke-dasharray": "3.1 2.71" }],
    ["circle", { cx: 12, cy: 12, r: 5.3, fill: "none", stroke: "currentColor",
      "stroke-width": 2.4 }]),
  copy: () => svg("0 0 24 24",
    ["rect", { x: 8, y: 8, width: 12, height: 12, rx: 2, fill: "none",
      stroke: "currentColor", "stroke-width": 2 }],
    ["path", { d: "M16 8V6a2 2 0 0 0-2-2H6a2 2 0 0 0-2 2v8a2 2 0 0 0 2 2h2", fill: "none",
      stroke: "currentColor", "stroke-width": 2 }]),
  mail: () => svg("0 0 24 24",
    ["rect", { x: 3, y: 5, width: 18, height: 14, rx: 2, fill: "none",
      stroke: "currentColor", "stroke-width": 2 }],
    ["path", { d: "M3.5 6.5 12 13l8.5-6.5", fill: "none", stroke: "currentColor",
      "stroke-width": 2, "stroke-linejoin": "round" }]),
  check: () => svg("0 0 24 24",
    ["path", { d: "M5 12.5 10 17l9-10", fill: "none", stroke: "currentColor",
      "stroke-width": 2.4, "stroke-linecap": "round", "stroke-linejoin": "round" }]),
  key: () => svg("0 0 24 24",
    ["circle", { cx: 8, cy: 12, r: 4, fill: "none", stroke: "currentColor",
      "stroke-width": 2 }],
    ["path", { d: "M12 12h9M18 12v3M21 12v2", fill: "none", stroke: "currentColor",
      "stroke-width": 2, "stroke-linecap": "round" }]),
  chevron: () => svg("0 0 24 24",
    ["path", { d: "M9 6l6 6-6 6", fill: "none", stroke: "currentColor", "stroke-width": 2,
      "stroke-linecap": "round", "stroke-linejoin": "round" }]),
};

/** Every element that can take focus with Tab inside `root`, in order. */
export function tabbables(root) {
  const selector = "a[href], button, input, select, textarea, [tabindex]:not([tabindex='-1'])";
  return [...root.querySelectorAll(selector)].filter(
    (el) => !el.disabled && !el.closest("[hidden]") && el.getClientRects().length > 0,
  );
}

/**
 * Keep Tab and Shift+Tab inside a modal dialog (the browser would also let focus leave for its
 * own toolbar), and give focus back to where it was when the dialog closes.
 */
export function trapFocus(dialog) {
  dialog.addEventListener("keydown", (event) => {
    if (event.key !== "Tab") return;
    const items = tabbables(dialog);
    if (items.length === 0) {
      event.preventDefault();
      return;
    }
    const first = items[0];
    const last = items[items.length - 1];
    if (event.shiftKey && (document.activeElement === first || !dialog.contains(document.activeElement))) {
      event.preventDefault();
      last.focus();
    } else if (!event.shiftKey && (document.activeElement === last || !dialog.contains(document.activeElement))) {
      event.preventDefault();
      first.focus();
    }
  });
}
