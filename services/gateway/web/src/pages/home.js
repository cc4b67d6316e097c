// @ts-check
/**
 * Home: the head, the latest random pulse, blocks arriving live (verified as they come),
 * charts. The latest pulse is, as ``/v1/beacon/latest``, the newest block whose randomness is
 * random — decided here from the verified header (core/pulse.js), never from the server.
 */

import { toHex } from "../core/bytes.js";
import { getJson, h, replace, shortHex, time } from "../ui/dom.js";
import { lineChart } from "../ui/charts.js";
import { BlockRows } from "../ui/rows.js";
import { Verifier, pulseMark } from "../ui/verifier.js";

const INITIAL = 6;
const WINDOW_MS = 5 * 60_000;

/** @param {HTMLElement} root */
export async function homePage(root) {
  const chain = await getJson("/explorer/api/chain");
  const verifier = new Verifier(chain);
  const rows = new BlockRows(verifier, { newestFirst: true, limit: 20 });
  const headCard = h("div", { class: "card", id: "head" }, h("h3", {}, "Head"), h("div", { class: "big" }, "—"));
  const pulseCard = h("div", { class: "card", id: "pulse" }, h("h3", {}, "Latest random pulse"), h("div", { class: "muted" }, "none verified yet"));
  const countCard = h("div", { class: "card", id: "counts" }, h("h3", {}, "Verified here"), h("div", { class: "big" }, "0"));
  const charts = h("div", { class: "cards", id: "charts" });
  replace(root, h("h1", {}, `Chain ${chain.chain_id}`), h("div", { class: "cards" }, headCard, pulseCard, countCard),
    h("h2", {}, "Last minutes"), charts, h("h2", {}, "Blocks, live"), rows.element);

  /** @type {{height: number, time_ms: number, proposed_at_ms: number, finalized_at_ms: number}[]} */
  let timeline = (await getJson("/explorer/api/timeline?count=400")).blocks;
  const drawCharts = () => {
    const last = timeline.length ? timeline[timeline.length - 1].time_ms : 0;
    const recent = timeline.filter((b) => b.time_ms >= last - WINDOW_MS);
    const clock = (/** @type {number} */ ms) => new Date(ms).toISOString().slice(11, 19);
    const intervals = /** @type {[number, number][]} */ (recent.slice(1).map((b, i) => [b.time_ms, b.time_ms - recent[i].time_ms]));
    const finality = /** @type {[number, number][]} */ (recent.map((b) => [b.time_ms, b.finalized_at_ms - b.proposed_at_ms]));
    charts.replaceChildren(lineChart(finality, { label: "Finality latency (proposal to commit)", unit: "ms", xLabel: clock }),
      lineChart(intervals, { label: "Block interval", unit: "ms", xLabel: clock }));
  };
  drawCharts();

  let pulseHeight = 0;
  /** The pulse card shows the newest verified, random block seen so far.
   * @param {number} height @param {import("../ui/verifier.js").Verdict} verdict */
  const offerPulse = (height, verdict) => {
    if (!verdict.ok || !verdict.block || !verdict.pulse?.random || height <= pulseHeight) return;
    pulseHeight = height;
    pulseCard.setAttribute("data-height", String(height));
    pulseCard.replaceChildren(h("h3", {}, "Latest random pulse"), shortHex(toHex(verdict.block.header.randomness), 48),
      h("div", {}, h("a", { href: `/beacon?height=${height}` }, `pulse ${height}`), " · verified · ", pulseMark(verdict)));
  };

  /** @param {import("../ui/verifier.js").BlockDoc} doc */
  const show = async (doc) => {
    const { verdict, block } = await rows.add(doc);
    countCard.replaceChildren(h("h3", {}, "Verified here"), h("div", { class: "big" }, rows.verified),
      h("div", { class: "muted" }, rows.failed ? `${rows.failed} failed` : "none failed"));
    if (!block) return;
    headCard.replaceChildren(h("h3", {}, "Head"), h("div", { class: "big" }, h("a", { href: `/blocks/${doc.height}` }, doc.height)),
      h("div", { class: "muted" }, time(block.header.timeMs)), h("div", {}, pulseMark(verdict)));
    offerPulse(doc.height, verdict);
    if (!timeline.some((b) => b.height === doc.height)) {
      timeline = [...timeline, { height: doc.height, time_ms: block.header.timeMs, proposed_at_ms: doc.proposed_at_ms, finalized_at_ms: doc.finalized_at_ms }].slice(-400);
      drawCharts();
    }
  };

  /** No random pulse among the blocks shown: the one the gateway names as the latest random,
   * verified and its status computed here like any other (shown only if both hold).
   * @param {number} height */
  const olderPulse = async (height) => {
    try {
      const doc = await getJson(`/explorer/api/blocks/${height}`);
      offerPulse(height, await verifier.verify(doc, await verifier.anchorBefore(height)));
    } catch {
      // not retained any more: the card keeps saying none is verified
    }
  };

  const head = chain.head?.height ?? 0;
  const from = Math.max(chain.first_retained_height, head - INITIAL + 1, 1);
  if (head > 0) {
    const { blocks } = await getJson(`/explorer/api/blocks?from=${from}&count=${INITIAL}`);
    for (const doc of blocks) if (doc) await show(doc);
  }
  const named = chain.latest_random_height ?? 0;
  if (pulseHeight === 0 && named > 0 && named < from) await olderPulse(named);
  // Live: the stream starts after what is shown; each block is verified against the one before.
  const stream = new EventSource(`/explorer/api/stream?from=${head + 1}`);
  let queue = Promise.resolve();
  stream.addEventListener("block", (event) => {
    const doc = JSON.parse(/** @type {MessageEvent} */ (event).data);
    queue = queue.then(() => show(doc));
  });
  addEventListener("pagehide", () => stream.close());
}
