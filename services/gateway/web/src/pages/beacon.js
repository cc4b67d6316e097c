// @ts-check
/**
 * The beacon: a pulse by height or by time (default: the latest random one, as
 * ``/v1/beacon/latest``), its proof, and the page's own check of it — the pulse status included,
 * computed from the verified header.
 */

import { equalBytes, fromBase64, fromHex, toHex } from "../core/bytes.js";
import { decodeHeader } from "../core/block.js";
import { fields, getJson, h, hex, message, replace, time } from "../ui/dom.js";
import { Verifier, banner } from "../ui/verifier.js";

/** @param {HTMLElement} root @param {URLSearchParams} query */
export async function beaconPage(root, query) {
  const chain = await getJson("/explorer/api/chain");
  const heightInput = h("input", { type: "number", name: "height", min: chain.first_retained_height, max: chain.head?.height ?? 1, value: query.get("height") ?? "" });
  const timeInput = h("input", { type: "datetime-local", name: "time", step: "1", value: query.get("time") ?? "" });
  const form = h("form", { class: "lookup", method: "get", action: "/beacon" },
    h("label", {}, "height", heightInput), h("label", {}, "or time (UTC)", timeInput), h("button", { type: "submit" }, "Look up"));
  const out = h("section", { id: "pulse" });
  replace(root, h("h1", {}, "Randomness beacon"), form, out);
  let path = `/explorer/api/beacon/${chain.latest_random_height || (chain.head?.height ?? 1)}`;
  if (query.get("height")) path = `/explorer/api/beacon/${Number(query.get("height"))}`;
  else if (query.get("time_ms")) path = `/explorer/api/beacon?time_ms=${Number(query.get("time_ms"))}`;
  else if (query.get("time")) path = `/explorer/api/beacon?time_ms=${Date.parse(`${query.get("time")}Z`)}`;
  if (!chain.head) { replace(out, h("p", { class: "muted" }, "No pulse yet.")); return; }
  let pulse;
  try {
    pulse = await getJson(path);
  } catch (error) {
    replace(out, h("p", {}, `No pulse: ${message(error)}`));
    return;
  }
  const verifier = new Verifier(chain);
  const doc = await getJson(`/explorer/api/blocks/${pulse.height}`);
  const previous = await verifier.anchorBefore(pulse.height);
  const verdict = await verifier.verify(doc, previous);
  // The pulse's proof must be the verified block's own header, certificate and predecessor.
  const proof = pulse.proof;
  const header = decodeHeader(fromBase64(proof.header));
  const consistent = verdict.block !== null && equalBytes(fromBase64(proof.header), verdict.block.header.canonical)
    && equalBytes(fromBase64(proof.commit), fromBase64(doc.commit)) && equalBytes(fromHex(pulse.randomness), header.randomness)
    && (previous === null || proof.previous_randomness === null || equalBytes(fromHex(proof.previous_randomness), previous.randomness));
  if (!consistent) verdict.findings.unshift({ check: "randomness", reason: "the pulse's proof is not the verified block's header, certificate and previous randomness" });
  verdict.ok = verdict.ok && consistent;
  replace(out, h("h2", {}, `Pulse ${pulse.height}`), banner(verdict), fields([
    ["randomness", hex(pulse.randomness)], ["time", time(pulse.time_ms)],
    ["block", h("a", { href: `/blocks/${pulse.height}` }, hex(pulse.block_hash))],
    ["algorithm", proof.algorithm], ["previous randomness", proof.previous_randomness ? hex(proof.previous_randomness) : "—"],
    ["randomness input", h("details", {}, h("summary", {}, `${fromBase64(proof.randomness_input).length} bytes (BlockRandomness: height and entropy references)`), hex(toHex(fromBase64(proof.randomness_input))))],
    ["entropy", `${proof.entropy.length} chunks from ${new Set(proof.entropy.map((/** @type {any} */ e) => e.source_id)).size} sources`],
    ["validators hash", hex(proof.validators_hash)],
    ["header", h("details", {}, h("summary", {}, `${fromBase64(proof.header).length} bytes, canonical`), hex(toHex(fromBase64(proof.header))))],
    ["commit certificate", h("details", {}, h("summary", {}, `${fromBase64(proof.commit).length} bytes, canonical`), hex(toHex(fromBase64(proof.commit))))],
  ]));
}
