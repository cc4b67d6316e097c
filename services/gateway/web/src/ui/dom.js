// @ts-check
/** DOM building without innerHTML (what the gateway serves is never parsed as markup). */

/**
 * @param {string} tag
 * @param {Record<string, string | number | boolean | null | undefined>} [attrs]
 * @param {...(Node | string | number | null | undefined | false)} children
 * @returns {HTMLElement}
 */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** @param {HTMLElement} root @param {...(Node | string)} nodes */
export function replace(root, ...nodes) {
  root.replaceChildren(...nodes);
}

/** @param {string} text @param {number} [keep] a shortened hex string, full value on hover */
export function shortHex(text, keep = 16) {
  return h("span", { class: "hex", title: text }, text.length > keep ? `${text.slice(0, keep)}…` : text);
}

/** @param {string} text */
export const hex = (text) => h("span", { class: "hex" }, text);

/** @param {number} ms */
export const time = (ms) => new Date(ms).toISOString().replace("T", " ").replace("Z", " UTC");

/** @param {bigint | number} micro an amount in micro-units */
export function amount(micro) {
  const value = BigInt(micro);
  const whole = value / 1_000_000n;
  const frac = (value % 1_000_000n).toString().padStart(6, "0").replace(/0+$/, "");
  return frac ? `${whole.toLocaleString("en")}.${frac}` : whole.toLocaleString("en");
}

/** @param {[string, Node | string | number | null | undefined][]} rows */
export function fields(rows) {
  const list = h("dl", { class: "fields" });
  for (const [name, value] of rows) list.append(h("dt", {}, name), h("dd", {}, value ?? "—"));
  return list;
}

/** @param {string[]} head @param {(Node | string | number | null)[][]} rows @param {Record<string, string>} [attrs] */
export function table(head, rows, attrs = {}) {
  const body = h("tbody");
  for (const row of rows) body.append(h("tr", {}, ...row.map((cell) => h("td", {}, cell))));
  return h("div", { class: "scroll" }, h("table", attrs, h("thead", {}, h("tr", {}, ...head.map((name) => h("th", {}, name)))), body));
}

/** A JSON GET on the gateway; throws with the problem's detail on an error status.
 * @param {string} path @returns {Promise<any>} */
export async function getJson(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error(body?.detail ?? `${response.status} ${response.statusText}`);
  return body;
}

/** @param {unknown} error */
export const message = (error) => (error instanceof Error ? error.message : String(error));
