// @ts-check
/**
 * The page's verifier: fetches what a block is checked against (the block before it, the
 * validator set its header names, the genesis for block 1) and runs ``core/verify.js``.
 * Validator sets are kept by their hash, so a set is fetched once per change.
 */

import { blockHash, decodeBlock, decodeHeader } from "../core/block.js";
import { fromBase64, fromHex, toHex } from "../core/bytes.js";
import { headerAnchor, verifyBlock } from "../core/verify.js";
import { validatorSetFromJson, validatorSetHash } from "../core/validators.js";
import { getJson, h } from "./dom.js";

/** @typedef {import("../core/verify.js").Anchor} Anchor */
/** @typedef {import("../core/verify.js").Verdict} Verdict */
/** @typedef {import("../core/commit.js").Validator} Validator */
/** @typedef {{height: number, block: string, commit: string, state_hash: string, proposed_at_ms: number, finalized_at_ms: number, kafka_offset: number}} BlockDoc */

export const CHECKS = ["decode", "hash_link", "validator_set", "time", "entropy_root", "entropy_health", "block_body", "randomness", "proposer", "commit"];

export class Verifier {
  /** @param {any} chain the /explorer/api/chain document */
  constructor(chain) {
    this.chain = chain;
    /** @type {Map<string, Validator[]>} */
    this.sets = new Map();
  }

  /** @returns {Anchor | null} */
  genesisAnchor() {
    const g = this.chain.genesis;
    if (!g) return null;
    return { chainId: g.chain_id, height: 0, hash: fromHex(g.hash), randomness: fromHex(g.randomness), timeMs: g.time_ms, nextValidatorsHash: fromHex(g.validators_hash), entropy: [] };
  }

  /** The anchor for ``height``: the genesis, or the header of ``height - 1`` as served.
   * @param {number} height @returns {Promise<Anchor | null>} */
  async anchorBefore(height) {
    if (height === 1) return this.genesisAnchor();
    if (height - 1 < this.chain.first_retained_height) return null;
    try {
      const doc = await getJson(`/explorer/api/headers/${height - 1}`);
      const bytes = fromBase64(doc.header);
      return headerAnchor(decodeHeader(bytes), blockHash(bytes));
    } catch {
      return null;
    }
  }

  /** The set of ``height`` whose hash the header names (fetched when not known yet).
   * @param {number} height @param {Uint8Array} wanted @returns {Promise<Validator[] | null>} */
  async validatorsFor(height, wanted) {
    const known = this.sets.get(toHex(wanted));
    if (known) return known;
    try {
      const doc = await getJson(`/explorer/api/validators/${height}`);
      const set = validatorSetFromJson(doc.validators);
      this.sets.set(toHex(validatorSetHash(set)), set);
      return set;
    } catch {
      return null;
    }
  }

  /** Verify one served block against ``previous`` (the anchor of the block before it).
   * @param {BlockDoc} doc @param {Anchor | null} previous @returns {Promise<Verdict>} */
  async verify(doc, previous) {
    const blockBytes = fromBase64(doc.block);
    let validators = null;
    try {
      const { header } = decodeBlock(blockBytes);
      validators = await this.validatorsFor(header.height, header.validatorsHash);
    } catch {
      // undecodable: verifyBlock names it
    }
    return verifyBlock({ block: blockBytes, commit: fromBase64(doc.commit), previous, validators, nowMs: Date.now() });
  }
}

/** The verdict as a badge: "verified", or the first failed check and why.
 * @param {Verdict | null} verdict */
export function badge(verdict) {
  if (verdict === null) return h("span", { class: "verdict pending", "data-verdict": "pending" }, "verifying…");
  if (verdict.ok) return h("span", { class: "verdict ok", "data-verdict": "verified", title: "verified in your browser" }, "✔ verified");
  const first = verdict.findings[0];
  return h("span", { class: "verdict bad", "data-verdict": first.check, title: first.reason }, `✘ ${first.check}`);
}

/**
 * The pulse status as a mark, computed in this browser from the verified header (never the
 * server's flag): "random", or "not random" with the status text on hover; "—" for a block that
 * is not verified (its header proves nothing).
 * @param {Verdict | null} verdict
 */
export function pulseMark(verdict) {
  if (verdict === null || !verdict.ok || verdict.pulse === null) return h("span", { class: "pulse unknown", "data-random": "unknown" }, "—");
  const { status, random, text } = verdict.pulse;
  if (random) return h("span", { class: "pulse ok", "data-random": "true", "data-status": status, title: `status ${status}: ${text}` }, "random");
  return h("span", { class: "pulse bad", "data-random": "false", "data-status": status, title: `status ${status}: ${text}` }, "⚠ not random");
}

/** One line on the pulse status of a verified block (or why there is none). @param {Verdict} verdict */
function pulseLine(verdict) {
  if (!verdict.ok || verdict.pulse === null) {
    return h("p", { class: "pulse-line muted", id: "pulse-status", "data-random": "unknown" }, "Pulse status: not established (the block is not verified)");
  }
  const { status, random, text } = verdict.pulse;
  return h("p", { class: `pulse-line ${random ? "ok" : "bad"}`, id: "pulse-status", "data-random": String(random), "data-status": status },
    `Pulse status ${status}: ${text}`, random ? null : h("span", { class: "muted" }, " — do not use this value as randomness."));
}

/** The verdict as a banner listing every check, and the pulse status. @param {Verdict} verdict */
export function banner(verdict) {
  const failed = new Set(verdict.findings.map((f) => f.check));
  const list = h("ul", { class: "checks" });
  for (const check of CHECKS) {
    if (check === "decode" && !failed.has("decode")) continue;
    list.append(h("li", { class: failed.has(check) ? "failed" : null }, `${failed.has(check) ? "✘" : "✔"} ${check.replace("_", " ")}`));
  }
  const head = verdict.ok
    ? h("strong", { "data-verdict": "verified" }, "✔ Verified in your browser")
    : h("strong", { "data-verdict": verdict.findings[0].check }, `✘ Not verified: ${verdict.findings[0].check} check failed`);
  const reasons = verdict.findings.map((f) => h("div", { class: "muted" }, `${f.check}: ${f.reason}`));
  return h("section", { class: `banner ${verdict.ok ? "ok" : "bad"}`, id: "verdict" }, head, list, ...reasons, pulseLine(verdict));
}
