// @ts-check
/**
 * "Verified in your browser": one block checked against the block before it and the validator
 * set its header names, with the same checks, in the same order and under the same names as
 * protocol/check.py (what the SDK's light subscriber runs):
 *
 *   decode         the block and certificate bytes are canonical encodings
 *   hash_link      chain id, height and previous block hash link to the previous block
 *   validator_set  the served set hashes to the header's validators hash (and to the previous
 *                  header's next validators hash)
 *   time           later than the previous block, not ahead of this clock by more than 10 s
 *   entropy_root / block_body   the body matches the header's roots and ordering rules
 *   entropy_health every entropy ref's SP 800-90B summary passes (core/health.js)
 *   precommitment  with the previous block's entropy at hand: each chunk of a source that block
 *                  held is flagged committed exactly when it is what that chunk committed to,
 *                  and the fresh source count is exact (docs/precommitment.md)
 *   randomness     HMAC-SHA-512 re-derived from the previous randomness and the committed
 *                  entropy refs
 *   proposer       a member of the set
 *   commit         every signature (ML-DSA-65 or Ed25519) verifies and the signers hold more
 *                  than 2/3 of the power, counted in integers
 *
 * The state hash needs the ledger re-executed, which a page does not do: it is shown, not
 * checked (the SDK's full mode checks it); so is the header's count of registered QRNG sources
 * (taken from the header, as the SDK's light subscriber takes it; signed by the certificate).
 *
 * Beside the verdict, the pulse status of the block's randomness (core/pulse.js), computed here
 * from the decoded header: a verified block whose pulse is not random (no fresh entropy, or
 * fewer sources than the two-source rule asks) is still a valid block, but its randomness must
 * not be used as a random value.
 */

import { equalBytes, toHex } from "./bytes.js";
import { structuralProblem, decodeBlock, freshSourcesOf } from "./block.js";
import { decodeCommit, verifyCommit } from "./commit.js";
import { pulseOf } from "./pulse.js";
import { blockRandomness } from "./randomness.js";
import { validatorSetHash } from "./validators.js";

export const MAX_CLOCK_DRIFT_MS = 10_000;

/** @typedef {import("./block.js").Block} Block */
/** @typedef {import("./block.js").Finding} Finding */
/** @typedef {import("./commit.js").Commit} Commit */
/** @typedef {import("./commit.js").Validator} Validator */
/**
 * What a block is checked against: the previous block (or the genesis, height 0).
 * ``entropy``: the previous block's entropy refs (empty for the genesis; absent when unknown).
 * @typedef {{chainId: string, height: number, hash: Uint8Array, randomness: Uint8Array,
 *   timeMs: number, nextValidatorsHash: Uint8Array | null,
 *   entropy?: import("./block.js").EntropyRef[]}} Anchor
 */
/** @typedef {import("./pulse.js").Pulse} Pulse */
/**
 * ``pulse``: the status of the block's randomness from its decoded header (null when it does
 * not decode); meaningful for a verified block only.
 * @typedef {{ok: boolean, findings: Finding[], block: Block | null, commit: Commit | null,
 *   signedPower: bigint, totalPower: bigint, pulse: Pulse | null}} Verdict
 */

/** The anchor a verified (or shown) block gives the next one. @param {Block} block @returns {Anchor} */
export function anchorOf(block) {
  const h = block.header;
  return { ...headerAnchor(h, block.hash), entropy: block.body.entropy };
}

/**
 * The anchor of a block known by its header alone (its entropy unknown, so the next block's
 * precommitment is not judged). @param {import("./block.js").Header} h @param {Uint8Array} hash
 * @returns {Anchor}
 */
export function headerAnchor(h, hash) {
  return { chainId: h.chainId, height: h.height, hash, randomness: h.randomness, timeMs: h.timeMs, nextValidatorsHash: h.nextValidatorsHash };
}

/** @param {Uint8Array | number | string} value */
const show = (value) => (value instanceof Uint8Array ? toHex(value).slice(0, 16) : JSON.stringify(value));

/**
 * protocol/check.py's ``precommitment`` check, with the previous block's refs standing in for
 * the chain tip's commitments (so a source absent from the previous block is not judged).
 * @param {Block} block @param {import("./block.js").EntropyRef[]} previous @returns {Finding | null}
 */
function precommitmentProblem(block, previous) {
  const before = new Map(previous.map((ref) => [ref.sourceId, ref]));
  for (const ref of block.body.entropy) {
    const earlier = before.get(ref.sourceId);
    if (earlier && ref.committed !== equalBytes(earlier.nextDigest, ref.digest)) {
      return { check: "precommitment", reason: `chunk '${ref.sourceId}'/${ref.seq} is flagged ${ref.committed ? "committed" : "uncommitted"} against what its source's chunk in the previous block committed to` };
    }
  }
  const fresh = freshSourcesOf(block.body.entropy, before.keys());
  if (block.header.freshSources !== fresh) {
    return { check: "precommitment", reason: `header says ${block.header.freshSources} sources contributed fresh entropy; ${fresh} devices have a committed chunk following one of the previous block` };
  }
  return null;
}

/**
 * Check one block (module doc). ``previous`` null means the previous block is not available;
 * ``validators`` is the set served for the block's height (null when unavailable).
 * @param {{block: Uint8Array, commit: Uint8Array, previous: Anchor | null,
 *   validators: Validator[] | null, nowMs?: number}} input
 * @returns {Verdict}
 */
export function verifyBlock({ block: blockBytes, commit: commitBytes, previous, validators, nowMs }) {
  /** @type {Finding[]} */
  const findings = [];
  let block;
  let commit;
  try {
    block = decodeBlock(blockBytes);
    commit = decodeCommit(commitBytes);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    return { ok: false, findings: [{ check: "decode", reason: `malformed block or certificate: ${reason}` }], block: null, commit: null, signedPower: 0n, totalPower: 0n, pulse: null };
  }
  const header = block.header;
  if (previous === null) {
    findings.push({ check: "hash_link", reason: "the previous block is not available here, so the link cannot be checked" });
  } else {
    /** @type {[string, Uint8Array | number | string, Uint8Array | number | string][]} */
    const links = [["chain id", header.chainId, previous.chainId], ["height", header.height, previous.height + 1],
      ["previous block hash", header.previousBlockHash, previous.hash]];
    for (const [name, got, want] of links) {
      const same = got instanceof Uint8Array && want instanceof Uint8Array ? equalBytes(got, want) : got === want;
      if (!same) findings.push({ check: "hash_link", reason: `header ${name} ${show(got)} is not the expected ${show(want)}` });
    }
  }
  if (validators === null) {
    findings.push({ check: "validator_set", reason: "the validator set of this height is not available" });
  } else if (!equalBytes(validatorSetHash(validators), header.validatorsHash)) {
    findings.push({ check: "validator_set", reason: "validators hash does not match the served validator set (wrong validator set)" });
  } else if (previous?.nextValidatorsHash && !equalBytes(previous.nextValidatorsHash, header.validatorsHash)) {
    findings.push({ check: "validator_set", reason: "validators hash is not the one the previous block announced" });
  }
  if (previous !== null && header.timeMs <= previous.timeMs) {
    findings.push({ check: "time", reason: `time ${header.timeMs} is not after ${previous.timeMs}` });
  }
  if (nowMs !== undefined && header.timeMs > nowMs + MAX_CLOCK_DRIFT_MS) {
    findings.push({ check: "time", reason: `block time is ${header.timeMs - nowMs} ms ahead of this clock (more than ${MAX_CLOCK_DRIFT_MS} ms)` });
  }
  const mismatch = structuralProblem(block);
  if (mismatch) findings.push(mismatch);
  const precommitment = previous?.entropy ? precommitmentProblem(block, previous.entropy) : null;
  if (precommitment) findings.push(precommitment);
  if (previous !== null) {
    const derived = blockRandomness(previous.randomness, header.height, block.body.entropy);
    if (!equalBytes(derived, header.randomness)) {
      findings.push({ check: "randomness", reason: `randomness is not the derived value: ${show(header.randomness)}… is not the value derived from the previous randomness and the block's entropy (${show(derived)}…)` });
    }
  }
  let signedPower = 0n;
  let totalPower = 0n;
  if (validators !== null) {
    if (!validators.some((v) => equalBytes(v.address, header.proposerAddress))) {
      findings.push({ check: "proposer", reason: `proposer ${toHex(header.proposerAddress)} is not a validator` });
    }
    const finding = checkCommit(header.chainId, validators, block, commit);
    if (finding.finding) findings.push(finding.finding);
    signedPower = finding.signedPower;
    totalPower = finding.totalPower;
  }
  return { ok: findings.length === 0, findings, block, commit, signedPower, totalPower, pulse: pulseOf(header) };
}

/**
 * protocol.check.check_commit: the certificate decides this block under ``validators``.
 * @param {string} chainId @param {Validator[]} validators @param {Block} block @param {Commit} commit
 * @returns {{finding: Finding | null, signedPower: bigint, totalPower: bigint}}
 */
function checkCommit(chainId, validators, block, commit) {
  const height = block.header.height;
  const totalPower = validators.reduce((sum, v) => sum + v.power, 0n);
  if (commit.height !== height || !equalBytes(commit.blockHash, block.hash)) {
    return { finding: { check: "commit", reason: `certificate is for block ${show(commit.blockHash)} at height ${commit.height}, not block ${show(block.hash)} at ${height}` }, signedPower: 0n, totalPower };
  }
  for (const record of commit.signatures) {
    if (record.flag !== 0 && !validators.some((v) => equalBytes(v.address, record.validatorAddress))) {
      return { finding: { check: "commit", reason: `signature from ${toHex(record.validatorAddress)}, which is not in the validator set of height ${height}` }, signedPower: 0n, totalPower };
    }
  }
  const result = verifyCommit(chainId, block.hash, height, commit, validators);
  if (!result.ok) {
    return { finding: { check: "commit", reason: `certificate does not verify against the validator set of height ${height}: ${result.reason}` }, signedPower: result.signedPower, totalPower };
  }
  return { finding: null, signedPower: result.signedPower, totalPower };
}
