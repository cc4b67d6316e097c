// @ts-check
/** Validators: power, commission, stake, liveness, jail, and their signing record. */

import { amount, getJson, h, replace, shortHex, table } from "../ui/dom.js";
import { uptimeStrip } from "../ui/charts.js";

/** @param {HTMLElement} root */
export async function validatorsPage(root) {
  const doc = await getJson("/explorer/api/staking");
  /** @param {any} v */
  const status = (v) => v.tombstoned ? "tombstoned" : v.jailed ? `jailed until ${v.jailed_until}` : v.active ? "active" : "inactive";
  const rows = doc.validators.map((/** @type {any} */ v) => [
    shortHex(v.address, 20), v.algorithm, v.power, `${(v.commission_rate * 100).toFixed(2)} %`,
    amount(v.self_stake), amount(v.delegated_stake), `${v.missed_blocks} / ${v.signed_blocks_window}`, status(v),
    v.uptime_ratio === null ? "—" : `${(v.uptime_ratio * 100).toFixed(1)} %`,
  ]);
  const strips = doc.validators.map((/** @type {any} */ v) => h("div", { class: "card" },
    h("h3", {}, shortHex(v.address, 20)), uptimeStrip(v.uptime || "-"),
    h("div", { class: "muted" }, v.uptime_ratio === null ? "no blocks yet" : `signed ${v.uptime.split("1").length - 1} of ${v.uptime.replaceAll("-", "").length}`)));
  replace(root, h("h1", {}, `Validators at height ${doc.height}`),
    h("p", { class: "muted" }, `Total voting power ${doc.total_power}. Stake in QST; missed blocks over the ledger's liveness window.`),
    table(["address", "key", "power", "commission", "self stake", "delegated", "missed", "status", "uptime"], rows, { id: "validators" }),
    h("h2", {}, `Signing record, blocks ${doc.uptime_first_height ?? "—"}–${doc.uptime_last_height ?? "—"}`),
    h("div", { class: "cards", id: "uptime" }, ...strips));
}
