// @ts-check
/**
 * Commit certificates (protocol/commit.py, protocol/codec.py): decoding, the precommit bytes
 * each record signed, and full verification against the validator set of the height.
 *
 * A certificate holds one record per validator of the set, in address order: ABSENT (no
 * signature), COMMIT (a precommit for the block) or NIL (a precommit for nil in the same round).
 * It verifies when every present signature verifies and the COMMIT power is more than two
 * thirds of the set's power, in integers: ``signed * 3 > total * 2``.
 */

import { equalBytes, toHex } from "./bytes.js";
import { CanonicalDecodeError, CanonicalReader, CanonicalWriter, HASH_SIZE } from "./canonical.js";
import { sha256, verifySignature } from "./crypto.js";

export const ADDRESS_SIZE = 20;
export const MAX_ITEMS = 100_000;
export const FLAGS = /** @type {const} */ (["ABSENT", "COMMIT", "NIL"]);
export const PRECOMMIT = 2;

/** @typedef {{flag: number, validatorAddress: Uint8Array, signature: Uint8Array}} CommitSig */
/** @typedef {{height: number, round: number, blockHash: Uint8Array, signatures: CommitSig[], canonical: Uint8Array}} Commit */
/** @typedef {{address: Uint8Array, algorithm: string, publicKey: Uint8Array, power: bigint}} Validator */
/** @typedef {{ok: boolean, reason: string, signedPower: bigint, totalPower: bigint}} CommitVerification */

/** @param {Uint8Array} data @returns {CommitSig} */
function decodeCommitSig(data) {
  const r = new CanonicalReader(data, "CommitSig");
  const flag = r.u8();
  if (flag > 2) throw new CanonicalDecodeError(`${flag} is not a valid CommitFlag`);
  const sig = { flag, validatorAddress: r.raw(ADDRESS_SIZE), signature: r.bytes() };
  r.done();
  return sig;
}

/** A certificate from its canonical bytes; throws ``CanonicalDecodeError``.
 * @param {Uint8Array} data @returns {Commit} */
export function decodeCommit(data) {
  const r = new CanonicalReader(data, "CommitCertificate");
  const height = r.u64Number();
  const round = r.u32();
  const blockHash = r.raw(HASH_SIZE);
  const signatures = r.sequence((x) => decodeCommitSig(x.nested()), MAX_ITEMS);
  r.done();
  return { height, round, blockHash, signatures, canonical: data };
}

/** The hash the next header carries as ``last_commit_hash``.
 * @param {Commit} commit */
export function commitHash(commit) {
  return sha256(new CanonicalWriter("CommitCertificateHash").nested(commit.canonical).finish());
}

/** What a validator signs for a vote (protocol.messages.vote_sign_bytes); null hash = nil.
 * @param {string} chainId @param {number} voteType @param {number} height @param {number} round
 * @param {Uint8Array | null} blockHash @param {Uint8Array} address */
export function voteSignBytes(chainId, voteType, height, round, blockHash, address) {
  return new CanonicalWriter("Vote")
    .text(chainId)
    .u8(voteType)
    .u64(height)
    .u32(round)
    .optional(blockHash, (w, hash) => w.raw(hash, HASH_SIZE))
    .raw(address, ADDRESS_SIZE)
    .finish();
}

/** @param {string} reason @param {bigint} signed @param {bigint} total @returns {CommitVerification} */
function fail(reason, signed, total) {
  return { ok: false, reason, signedPower: signed, totalPower: total };
}

/** @param {Uint8Array} value */
const short = (value) => toHex(value).slice(0, 16);

/**
 * Full verification (protocol.commit.verify_commit): shape, every present signature, and
 * COMMIT power > 2/3. Reasons read as the Python ones do.
 * @param {string} chainId @param {Uint8Array} blockHash @param {number} height
 * @param {Commit} cert @param {Validator[]} validators in address order
 * @returns {CommitVerification}
 */
export function verifyCommit(chainId, blockHash, height, cert, validators) {
  const total = validators.reduce((sum, v) => sum + v.power, 0n);
  if (cert.height !== height) return fail(`certificate is for height ${cert.height}, expected ${height}`, 0n, total);
  if (!equalBytes(cert.blockHash, blockHash)) {
    return fail(`certificate is for block ${short(cert.blockHash)}, expected ${short(blockHash)}`, 0n, total);
  }
  if (cert.signatures.length !== validators.length) {
    return fail(`certificate has ${cert.signatures.length} records for a set of ${validators.length} validators`, 0n, total);
  }
  for (const [position, record] of cert.signatures.entries()) {
    const validator = validators[position];
    if (!equalBytes(record.validatorAddress, validator.address)) {
      return fail(`record ${position} is for ${toHex(record.validatorAddress)}, expected ${toHex(validator.address)}`, 0n, total);
    }
    if ((record.flag === 0) !== (record.signature.length === 0)) {
      return fail(`record ${position} (${toHex(validator.address)}) flag and signature disagree`, 0n, total);
    }
  }
  let signed = 0n;
  for (const [position, record] of cert.signatures.entries()) {
    if (record.flag === 0) continue;
    const validator = validators[position];
    const message = voteSignBytes(chainId, PRECOMMIT, cert.height, cert.round, record.flag === 1 ? cert.blockHash : null, record.validatorAddress);
    if (!verifySignature(validator.algorithm, validator.publicKey, message, record.signature)) {
      return fail(`bad signature from ${toHex(validator.address)}`, signed, total);
    }
    if (record.flag === 1) signed += validator.power;
  }
  if (!(signed * 3n > total * 2n)) return fail(`signed power ${signed} is not more than 2/3 of ${total}`, signed, total);
  return { ok: true, reason: "ok", signedPower: signed, totalPower: total };
}
