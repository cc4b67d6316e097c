// @ts-check
/** A table of blocks, each verified in order against the one before it as served. */

import { toHex } from "../core/bytes.js";
import { anchorOf } from "../core/verify.js";
import { decodeBlock } from "../core/block.js";
import { fromBase64 } from "../core/bytes.js";
import { h, shortHex, time } from "./dom.js";
import { badge, pulseMark } from "./verifier.js";

/** @typedef {import("./verifier.js").Verifier} Verifier */
/** @typedef {import("./verifier.js").BlockDoc} BlockDoc */
/** @typedef {import("../core/verify.js").Anchor} Anchor */

export class BlockRows {
  /** @param {Verifier} verifier @param {{newestFirst: boolean, limit?: number}} options */
  constructor(verifier, { newestFirst, limit = Infinity }) {
    this.verifier = verifier;
    this.newestFirst = newestFirst;
    this.limit = limit;
    /** @type {Anchor | null | undefined} the block before the next one added; undefined: fetch */
    this.previous = undefined;
    this.body = h("tbody");
    this.verified = 0;
    this.failed = 0;
    this.element = h("div", { class: "scroll" }, h("table", { id: "blocks" }, h("thead", {}, h("tr", {},
      ...["height", "time", "hash", "signed power", "entropy", "txs", "verdict", "pulse"].map((name) => h("th", {}, name)))), this.body));
  }

  /** Verify and show the next block (heights in order). @param {BlockDoc} doc */
  async add(doc) {
    if (this.previous === undefined || (this.previous !== null && this.previous.height !== doc.height - 1)) {
      this.previous = await this.verifier.anchorBefore(doc.height);
    }
    const verdict = await this.verifier.verify(doc, this.previous);
    let block = verdict.block;
    if (block === null) {
      try { block = decodeBlock(fromBase64(doc.block)); } catch { block = null; }
    }
    // The next block is checked against this one as served, verified or not: a tampered block
    // also fails its successor's hash link, as a light client would see it.
    this.previous = block ? anchorOf(block) : null;
    if (verdict.ok) this.verified += 1; else this.failed += 1;
    const row = h("tr", { "data-height": doc.height },
      h("td", {}, h("a", { href: `/blocks/${doc.height}` }, doc.height)),
      h("td", {}, block ? time(block.header.timeMs) : "—"),
      h("td", {}, block ? shortHex(toHex(block.hash)) : "—"),
      h("td", {}, verdict.totalPower ? `${verdict.signedPower}/${verdict.totalPower}` : "—"),
      h("td", {}, block ? block.body.entropy.length : "—"),
      h("td", {}, block ? block.body.txs.length : "—"),
      h("td", {}, badge(verdict)),
      h("td", {}, pulseMark(verdict)));
    if (this.newestFirst) this.body.prepend(row); else this.body.append(row);
    while (this.body.children.length > this.limit) (this.newestFirst ? this.body.lastElementChild : this.body.firstElementChild)?.remove();
    return { verdict, block };
  }
}
