// @ts-check
/** A range of blocks, each verified in the browser (default: the last 10). */

import { getJson, h, replace } from "../ui/dom.js";
import { BlockRows } from "../ui/rows.js";
import { Verifier } from "../ui/verifier.js";

/** @param {HTMLElement} root @param {URLSearchParams} query */
export async function blocksPage(root, query) {
  const chain = await getJson("/explorer/api/chain");
  const head = chain.head?.height ?? 0;
  const count = Math.min(100, Math.max(1, Number(query.get("count") ?? 10)));
  const from = Math.max(chain.first_retained_height, Number(query.get("from") ?? Math.max(1, head - count + 1)));
  const rows = new BlockRows(new Verifier(chain), { newestFirst: false });
  const summary = h("p", { class: "muted", id: "summary" }, "verifying…");
  const pager = h("div", { class: "pager" },
    from > 1 ? h("a", { href: `/blocks?from=${Math.max(1, from - count)}&count=${count}` }, "← older") : h("span"),
    from + count <= head ? h("a", { href: `/blocks?from=${from + count}&count=${count}` }, "newer →") : h("span"));
  replace(root, h("h1", {}, `Blocks ${from}–${Math.min(head, from + count - 1)}`), summary, rows.element, pager);
  if (head === 0) { summary.textContent = "No block finalized yet."; return; }
  const { blocks } = await getJson(`/explorer/api/blocks?from=${from}&count=${count}`);
  for (const doc of blocks) if (doc) await rows.add(doc);
  summary.textContent = `${rows.verified} verified, ${rows.failed} failed verification in this browser.`;
  summary.setAttribute("data-done", "true");
}
