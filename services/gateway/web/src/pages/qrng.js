// @ts-check
/** QRNG sources: rate, health state, simulated or hardware, and alerts. */

import { getJson, h, replace, table, time } from "../ui/dom.js";
import { sparkline } from "../ui/charts.js";

/** @param {HTMLElement} root */
export async function qrngPage(root) {
  const [qrng, alerts] = await Promise.all([getJson("/explorer/api/qrng"), getJson("/explorer/api/alerts")]);
  const cards = qrng.sources.map((/** @type {any} */ s) => h("div", { class: "card", "data-source": s.source_id },
    h("h3", {}, s.source_id, " ", h("span", { class: "tag" }, s.simulated ? "simulated (OS CSPRNG, not quantum)" : "hardware")),
    h("div", {}, "health ", h("span", { class: `state-${s.health_state}` }, s.health_state)),
    h("div", { class: "big" }, `${(s.bytes_per_s / 1e6).toFixed(2)} MB/s`),
    sparkline(s.rates),
    h("div", { class: "muted" }, `chunks ${s.chunks_published}, last seq ${s.last_seq}, failed windows ${s.failed_windows}`),
    h("div", { class: "muted" }, s.heartbeat_age_ms === null ? "no heartbeat seen" : `heartbeat ${(s.heartbeat_age_ms / 1000).toFixed(1)} s ago`),
    s.registered ? null : h("div", { class: "state-STALLED" }, "not registered on chain"),
    ...s.alerts.slice(0, 3).map((/** @type {any} */ a) => h("div", { class: "state-QUARANTINED" }, `${time(a.at_ms)} ${a.kind}${a.test ? ` ${a.test}` : ""}: ${a.detail}`))));
  const parts = [h("h1", {}, "QRNG sources"), qrng.error ? h("p", { class: "muted" }, `status feed: ${qrng.error}`) : null,
    h("div", { class: "cards", id: "sources" }, ...cards), h("h2", {}, "Monitor alerts")];
  if (!alerts.available) {
    parts.push(h("p", { class: "muted", id: "alerts" }, "The monitor's alerts topic is not available (is `qustream monitor run` running?)."));
  } else {
    parts.push(h("p", { class: "muted" }, `${alerts.open.length} open.`),
      table(["state", "rule", "subject", "severity", "since", "summary"], [...alerts.open, ...alerts.recent.filter((/** @type {any} */ a) => a.state === "resolved")].slice(0, 30)
        .map((/** @type {any} */ a) => [a.state, a.rule, a.subject, a.severity, time(a.since_ms), a.summary]), { id: "alerts" }));
  }
  replace(root, ...parts.filter((p) => p !== null));
}
