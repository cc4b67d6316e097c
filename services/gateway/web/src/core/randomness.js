// @ts-check
/**
 * Block randomness (protocol/randomness.py):
 *   R_0 = HMAC-SHA-512(key = "QuStream/v1/GenesisRandomness", genesis value)
 *   R_h = HMAC-SHA-512(key = R_{h-1}, BlockRandomness(height, entropy refs sorted by (source, seq)))
 */

import { compareText, utf8 } from "./bytes.js";
import { CanonicalWriter, TAG_PREFIX } from "./canonical.js";
import { hmacSha512 } from "./crypto.js";
import { writeHealth } from "./health.js";

export const RANDOMNESS_SIZE = 64;

/** @typedef {{sourceId: string, seq: number, digest: Uint8Array, health: import("./health.js").HealthSummary}} EntropyRef */

/** protocol/block.py ``EntropyRef.canonical``: source, seq, digest, then the health summary.
 * @param {EntropyRef} ref */
export function entropyRefCanonical(ref) {
  return writeHealth(new CanonicalWriter("EntropyRef").text(ref.sourceId).u64(ref.seq).raw(ref.digest, 32), ref.health).finish();
}

/** @param {Uint8Array} genesisValue */
export function genesisRandomness(genesisValue) {
  return hmacSha512(utf8(`${TAG_PREFIX}GenesisRandomness`), genesisValue);
}

/** The HMAC message of a block. @param {number} height @param {EntropyRef[]} entropy */
export function randomnessInput(height, entropy) {
  const ordered = [...entropy].sort((a, b) => compareText(a.sourceId, b.sourceId) || a.seq - b.seq);
  return new CanonicalWriter("BlockRandomness")
    .u64(height)
    .sequence(ordered, (w, ref) => w.nested(entropyRefCanonical(ref)))
    .finish();
}

/** R_height from R_(height-1). @param {Uint8Array} previous @param {number} height @param {EntropyRef[]} entropy */
export function blockRandomness(previous, height, entropy) {
  if (previous.length !== RANDOMNESS_SIZE) throw new RangeError(`previous randomness must be ${RANDOMNESS_SIZE} bytes, got ${previous.length}`);
  return hmacSha512(previous, randomnessInput(height, entropy));
}
