// @ts-check
/** One block: verdict, header, entropy per source, signers, evidence, transactions, neighbours. */

import { readTag } from "../core/canonical.js";
import { FLAGS } from "../core/commit.js";
import { toHex } from "../core/bytes.js";
import { healthBySource, unhealthyEntropy } from "../core/health.js";
import { fields, getJson, h, hex, replace, shortHex, table, time } from "../ui/dom.js";
import { Verifier, banner } from "../ui/verifier.js";

/** @param {HTMLElement} root @param {number} height */
export async function blockPage(root, height) {
  const chain = await getJson("/explorer/api/chain");
  const verifier = new Verifier(chain);
  const doc = await getJson(`/explorer/api/blocks/${height}`);
  const verdict = await verifier.verify(doc, await verifier.anchorBefore(height));
  const head = chain.head?.height ?? height;
  const nav = h("div", { class: "pager" },
    height > 1 ? h("a", { href: `/blocks/${height - 1}`, rel: "prev" }, `← block ${height - 1}`) : h("span"),
    height < head ? h("a", { href: `/blocks/${height + 1}`, rel: "next" }, `block ${height + 1} →`) : h("span", { class: "muted" }, "head"));
  const parts = [h("h1", {}, `Block ${height}`), nav, banner(verdict)];
  const block = verdict.block;
  const commit = verdict.commit;
  if (block && commit) {
    const hd = block.header;
    parts.push(h("h2", {}, "Header"), fields([
      ["hash", hex(toHex(block.hash))], ["chain", hd.chainId], ["height", hd.height], ["round", hd.round],
      ["time", time(hd.timeMs)], ["previous block", h("a", { href: `/blocks/${hd.height - 1}` }, shortHex(toHex(hd.previousBlockHash), 24))],
      ["randomness", hex(toHex(hd.randomness))], ["entropy root", hex(toHex(hd.entropyRoot))], ["tx root", hex(toHex(hd.txRoot))],
      ["evidence root", hex(toHex(hd.evidenceRoot))], ["last commit hash", hex(toHex(hd.lastCommitHash))],
      ["validators hash", hex(toHex(hd.validatorsHash))], ["next validators hash", hex(toHex(hd.nextValidatorsHash))],
      ["app hash", hex(toHex(hd.appHash))], ["proposer", hex(toHex(hd.proposerAddress))],
      ["history root", hex(toHex(hd.historyRoot))],
    ]));
    parts.push(h("h2", {}, "Entropy per source"), table(["source", "chunks", "first seq", "last seq"],
      hd.entropyRanges.map((r) => [r.sourceId, r.last - r.first + 1, r.first, r.last]), { id: "entropy" }));
    // Folded here from the references this page decoded (and whose summaries the verdict
    // checked: entropy_health), never from the gateway's own "health" field.
    const health = healthBySource(block.body.entropy);
    const unhealthy = unhealthyEntropy(block.body.entropy);
    parts.push(h("h2", {}, "SP 800-90B health per source"),
      h("p", { class: unhealthy ? "pulse-line bad" : "muted", id: "health-verdict" }, unhealthy ?? (health.length
        ? "Every chunk passed its health tests: no failing window, every run and APT count below its cutoff."
        : "No entropy in this block.")),
      table(["source", "chunks", "windows", "samples", "max RCT run", "RCT cutoff", "max APT count", "APT cutoff / window", "failures"],
        health.map((s) => [s.sourceId, s.chunks, s.windows, String(s.samples), s.rctMaxRun, s.rctCutoff, s.aptMaxCount, `${s.aptCutoff} / ${s.aptWindow}`, s.failures]),
        { id: "health" }));
    const sets = verifier.sets.get(toHex(hd.validatorsHash)) ?? [];
    const power = new Map(sets.map((v) => [toHex(v.address), v]));
    parts.push(h("h2", {}, `Signers (round ${commit.round}): ${verdict.signedPower} of ${verdict.totalPower} power`),
      table(["validator", "key", "power", "precommit"], commit.signatures.map((s) => {
        const validator = power.get(toHex(s.validatorAddress));
        return [shortHex(toHex(s.validatorAddress), 20), validator?.algorithm ?? "?", validator ? String(validator.power) : "?", FLAGS[s.flag].toLowerCase()];
      }), { id: "signers" }));
    parts.push(h("h2", {}, `Evidence (${block.body.evidence.length})`), block.body.evidence.length === 0 ? h("p", { class: "muted" }, "No double votes reported in this block.")
      : table(["validator", "vote", "height/round", "first value", "second value"], block.body.evidence.map((e) => [
        shortHex(toHex(e.voteA.validatorAddress), 20), e.voteA.type === 1 ? "prevote" : "precommit", `${e.voteA.height}/${e.voteA.round}`,
        e.voteA.blockHash ? shortHex(toHex(e.voteA.blockHash)) : "nil", e.voteB.blockHash ? shortHex(toHex(e.voteB.blockHash)) : "nil"])));
    parts.push(h("h2", {}, `Transactions (${block.body.txs.length})`), block.body.txs.length === 0 ? h("p", { class: "muted" }, "No transactions.")
      : table(["#", "type", "bytes"], block.body.txs.map((tx, i) => [i, txType(tx), tx.length])));
  }
  parts.push(h("h2", {}, "Reported by the gateway (not checked by this page)"), fields([
    ["state hash after the block", hex(doc.state_hash)], ["proposed at", time(doc.proposed_at_ms)],
    ["finalized at", time(doc.finalized_at_ms)], ["proposal to finality", `${doc.finalized_at_ms - doc.proposed_at_ms} ms`],
    ["chain.blocks offset", doc.kafka_offset], ["beacon pulse", h("a", { href: `/beacon?height=${height}` }, "pulse and proof")],
  ]));
  replace(root, ...parts);
}

/** @param {Uint8Array} tx */
function txType(tx) {
  try {
    return readTag(tx);
  } catch {
    return "unknown";
  }
}
