// @ts-check
/** Merkle roots as protocol/merkle.py computes them (RFC 6962 / 9162 shape). */

import { concat } from "./bytes.js";
import { sha256 } from "./crypto.js";

const LEAF = Uint8Array.of(0);
const NODE = Uint8Array.of(1);
export const EMPTY_ROOT = sha256(new Uint8Array(0));

/** @param {Uint8Array[]} hashes @returns {Uint8Array} */
function rootOfHashes(hashes) {
  if (hashes.length === 1) return hashes[0];
  let split = 1;
  while (split * 2 < hashes.length) split *= 2; // largest power of two below the count
  return sha256(concat(NODE, rootOfHashes(hashes.slice(0, split)), rootOfHashes(hashes.slice(split))));
}

/** Root over ``leaves`` in the given order; the hash of nothing for none.
 * @param {Uint8Array[]} leaves */
export function merkleRoot(leaves) {
  if (leaves.length === 0) return EMPTY_ROOT;
  return rootOfHashes(leaves.map((leaf) => sha256(concat(LEAF, leaf))));
}
