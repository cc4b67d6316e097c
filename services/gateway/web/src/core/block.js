// @ts-check
/**
 * Blocks (protocol/block.py, protocol/codec.py): strict decoding of the canonical header, body
 * and block bytes, the block hash, and the context-free check that the body matches the header.
 *
 * The block hash is SHA-256 of BlockHash(header bytes); the header commits to the body through
 * Merkle roots of the entropy references, the transactions and the evidence, and through the
 * hash of the previous height's commit certificate.
 */

import { compareBytes, compareText, equalBytes } from "./bytes.js";
import { CanonicalDecodeError, CanonicalReader, CanonicalWriter, HASH_SIZE } from "./canonical.js";
import { ADDRESS_SIZE, MAX_ITEMS, commitHash, decodeCommit } from "./commit.js";
import { sha256 } from "./crypto.js";
import { impossibleHealth, readHealth, unhealthyEntropy } from "./health.js";
import { merkleRoot } from "./merkle.js";
import { RANDOMNESS_SIZE } from "./randomness.js";

/** @typedef {import("./commit.js").Commit} Commit */
/** @typedef {{sourceId: string, first: number, last: number}} SeqRange */
/** @typedef {import("./health.js").HealthSummary} HealthSummary */
/**
 * ``nextDigest``: the chunk's precommitment to its source's next payload; ``committed``: its
 * digest is what its source's previously included chunk committed to (protocol/block.py).
 * @typedef {{sourceId: string, seq: number, digest: Uint8Array, nextDigest: Uint8Array,
 *   committed: boolean, health: HealthSummary, canonical: Uint8Array}} EntropyRef
 */
/** @typedef {{type: number, height: number, round: number, blockHash: Uint8Array | null, validatorAddress: Uint8Array, signature: Uint8Array, canonical: Uint8Array}} Vote */
/** @typedef {{voteA: Vote, voteB: Vote, canonical: Uint8Array}} Evidence */
/**
 * @typedef {{chainId: string, height: number, round: number, timeMs: number,
 *   previousBlockHash: Uint8Array, lastCommitHash: Uint8Array, entropyRoot: Uint8Array,
 *   entropyRanges: SeqRange[], freshSources: number, registeredSources: number,
 *   randomness: Uint8Array, txRoot: Uint8Array, evidenceRoot: Uint8Array,
 *   validatorsHash: Uint8Array, nextValidatorsHash: Uint8Array, appHash: Uint8Array,
 *   proposerAddress: Uint8Array, historyRoot: Uint8Array, canonical: Uint8Array}} Header
 */
/** @typedef {{entropy: EntropyRef[], txs: Uint8Array[], evidence: Evidence[], lastCommit: Commit | null}} Body */
/** @typedef {{header: Header, body: Body, hash: Uint8Array}} Block */
/** @typedef {{check: string, reason: string}} Finding */

export const ZERO_HASH = new Uint8Array(HASH_SIZE);

/** @param {Uint8Array} data @returns {SeqRange} */
function decodeSeqRange(data) {
  const r = new CanonicalReader(data, "SeqRange");
  const range = { sourceId: r.text(), first: r.u64Number(), last: r.u64Number() };
  r.done();
  if (!range.sourceId || range.first > range.last) {
    throw new CanonicalDecodeError(`seq range ${JSON.stringify(range.sourceId)} ${range.first}..${range.last} is empty`);
  }
  return range;
}

/** @param {Uint8Array} data @returns {EntropyRef} */
function decodeEntropyRef(data) {
  const r = new CanonicalReader(data, "EntropyRef");
  const ref = {
    sourceId: r.text(), seq: r.u64Number(), digest: r.raw(HASH_SIZE), nextDigest: r.raw(HASH_SIZE),
    committed: r.boolean(), health: readHealth(r), canonical: data,
  };
  r.done();
  if (!ref.sourceId) throw new CanonicalDecodeError("entropy ref needs a source id");
  const impossible = impossibleHealth(ref.health);
  if (impossible) throw new CanonicalDecodeError(`entropy ref '${ref.sourceId}'/${ref.seq}: ${impossible}`);
  return ref;
}

/** @param {Uint8Array} data @returns {Vote} */
function decodeVote(data) {
  const r = new CanonicalReader(data, "SignedVote");
  const type = r.u8();
  if (type !== 1 && type !== 2) throw new CanonicalDecodeError(`${type} is not a valid VoteType`);
  const vote = {
    type, height: r.u64Number(), round: r.u32(), blockHash: r.optional((x) => x.raw(HASH_SIZE)),
    validatorAddress: r.raw(ADDRESS_SIZE), signature: r.bytes(), canonical: data,
  };
  r.done();
  if (vote.height < 1) throw new CanonicalDecodeError(`vote has bad height ${vote.height}`);
  return vote;
}

/** @param {Vote} vote */
const blockKey = (vote) => vote.blockHash ?? new Uint8Array(0);

/** @param {Uint8Array} data @returns {Evidence} */
function decodeEvidence(data) {
  const r = new CanonicalReader(data, "DuplicateVoteEvidence");
  const voteA = decodeVote(r.nested());
  const voteB = decodeVote(r.nested());
  r.done();
  const problem =
    voteA.type !== voteB.type || voteA.height !== voteB.height || voteA.round !== voteB.round ? "the votes are for different type/height/round"
      : !equalBytes(voteA.validatorAddress, voteB.validatorAddress) ? "the votes are from different validators"
        : equalBytes(blockKey(voteA), blockKey(voteB)) ? "the votes name the same value"
          : compareBytes(blockKey(voteA), blockKey(voteB)) > 0 ? "the votes are not in canonical order (nil or lower hash first)"
            : null;
  if (problem) throw new CanonicalDecodeError(`evidence: ${problem}`);
  return { voteA, voteB, canonical: data };
}

/** @param {Uint8Array} data @returns {Header} */
export function decodeHeader(data) {
  const r = new CanonicalReader(data, "BlockHeader");
  const header = {
    chainId: r.text(),
    height: r.u64Number(),
    round: r.u32(),
    timeMs: r.u64Number(),
    previousBlockHash: r.raw(HASH_SIZE),
    lastCommitHash: r.raw(HASH_SIZE),
    entropyRoot: r.raw(HASH_SIZE),
    entropyRanges: r.sequence((x) => decodeSeqRange(x.nested()), MAX_ITEMS),
    freshSources: r.u32(),
    registeredSources: r.u32(),
    randomness: r.raw(RANDOMNESS_SIZE),
    txRoot: r.raw(HASH_SIZE),
    evidenceRoot: r.raw(HASH_SIZE),
    validatorsHash: r.raw(HASH_SIZE),
    nextValidatorsHash: r.raw(HASH_SIZE),
    appHash: r.bytes(),
    proposerAddress: r.raw(ADDRESS_SIZE),
    historyRoot: r.raw(HASH_SIZE), // protocol/mmr.py: the root over every earlier block hash
    canonical: data,
  };
  r.done();
  if (header.height < 1) throw new CanonicalDecodeError(`header height ${header.height} invalid`);
  return header;
}

/** @param {Uint8Array} data @returns {Body} */
export function decodeBody(data) {
  const r = new CanonicalReader(data, "BlockBody");
  const body = {
    entropy: r.sequence((x) => decodeEntropyRef(x.nested()), MAX_ITEMS),
    txs: r.sequence((x) => x.bytes(), MAX_ITEMS),
    evidence: r.sequence((x) => decodeEvidence(x.nested()), MAX_ITEMS),
    lastCommit: r.optional((x) => decodeCommit(x.nested())),
  };
  r.done();
  return body;
}

/** SHA-256 of the BlockHash message wrapping the header bytes. @param {Uint8Array} headerBytes */
export function blockHash(headerBytes) {
  return sha256(new CanonicalWriter("BlockHash").nested(headerBytes).finish());
}

/** A block from ``Block.canonical()`` bytes; throws ``CanonicalDecodeError``.
 * @param {Uint8Array} data @returns {Block} */
export function decodeBlock(data) {
  const r = new CanonicalReader(data, "Block");
  const header = decodeHeader(r.nested());
  const body = decodeBody(r.nested());
  r.done();
  return { header, body, hash: blockHash(header.canonical) };
}

/** @param {Evidence} evidence */
export function evidenceHash(evidence) {
  return sha256(new CanonicalWriter("EvidenceHash").nested(evidence.canonical).finish());
}

/** @param {EntropyRef} a @param {EntropyRef} b */
const refOrder = (a, b) => compareText(a.sourceId, b.sourceId) || a.seq - b.seq;

const LANE_MARK = ".lane-";

/**
 * The device a source belongs to (protocol/entropy/registry.py ``device_of``): ``D`` for a lane
 * id ``D.lane-k``, else the source itself.
 * @param {string} sourceId @returns {string}
 */
export function deviceOf(sourceId) {
  const at = sourceId.lastIndexOf(LANE_MARK);
  const lane = at < 0 ? "" : sourceId.slice(at + LANE_MARK.length);
  return at > 0 && /^[0-9]+$/.test(lane) ? sourceId.slice(0, at) : sourceId;
}

/**
 * The header's ``freshSources``: the devices with a committed chunk whose source also had a
 * chunk in the previous block; lanes of one device count once (protocol/block.py
 * ``fresh_sources_of``).
 * @param {EntropyRef[]} entropy @param {Iterable<string>} previousSources @returns {number}
 */
export function freshSourcesOf(entropy, previousSources) {
  const previous = new Set(previousSources);
  return new Set(entropy.filter((ref) => ref.committed && previous.has(ref.sourceId)).map((ref) => deviceOf(ref.sourceId))).size;
}

/**
 * The devices with a committed chunk: the most ``freshSources`` a block can claim, whatever the
 * block before it held (protocol/block.py ``committed_devices``).
 * @param {EntropyRef[]} entropy @returns {number}
 */
export function committedDevices(entropy) {
  return new Set(entropy.filter((ref) => ref.committed).map((ref) => deviceOf(ref.sourceId))).size;
}

/** @param {Block} block @returns {string | null} */
function entropyMismatch(block) {
  const { header, body } = block;
  for (let i = 1; i < body.entropy.length; i += 1) {
    if (refOrder(body.entropy[i - 1], body.entropy[i]) >= 0) return "entropy refs are not sorted by (source, seq) and unique";
  }
  /** @type {SeqRange[]} */
  const ranges = [];
  for (const ref of body.entropy) {
    const last = ranges[ranges.length - 1];
    if (last && last.sourceId === ref.sourceId) {
      if (ref.seq !== last.last + 1) return `entropy of '${ref.sourceId}' is not contiguous at seq ${ref.seq}`;
      last.last = ref.seq;
    } else {
      ranges.push({ sourceId: ref.sourceId, first: ref.seq, last: ref.seq });
    }
  }
  const same = ranges.length === header.entropyRanges.length && ranges.every((range, i) => {
    const other = header.entropyRanges[i];
    return range.sourceId === other.sourceId && range.first === other.first && range.last === other.last;
  });
  if (!same) return "header entropy ranges do not match the body";
  const wide = ranges.find((range) => range.last !== range.first);
  if (wide) {
    return `'${wide.sourceId}' has chunks ${wide.first}..${wide.last}: a block includes at most one chunk per source, so every chunk it mixes was committed to before`;
  }
  const devices = committedDevices(body.entropy);
  if (header.freshSources > devices) {
    return `header says ${header.freshSources} sources contributed fresh entropy, the body has committed chunks of ${devices} devices`;
  }
  if (!equalBytes(merkleRoot(body.entropy.map((ref) => ref.canonical)), header.entropyRoot)) return "entropy root does not match the body";
  return null;
}

/**
 * Why the body does not match the header or the ordering rules, as a finding (check
 * ``entropy_root``, ``entropy_health`` or ``block_body``), or null
 * (protocol.block.Block.structural_problem).
 * @param {Block} block @returns {Finding | null}
 */
export function structuralProblem(block) {
  const { header, body } = block;
  const entropy = entropyMismatch(block);
  if (entropy) return { check: "entropy_root", reason: entropy };
  const unhealthy = unhealthyEntropy(body.entropy);
  if (unhealthy) return { check: "entropy_health", reason: unhealthy };
  /** @param {string} reason */
  const bodyFinding = (reason) => ({ check: "block_body", reason });
  if (!equalBytes(merkleRoot(body.txs), header.txRoot)) return bodyFinding("tx root does not match the body");
  const hashes = body.evidence.map(evidenceHash);
  for (let i = 1; i < hashes.length; i += 1) {
    if (compareBytes(hashes[i - 1], hashes[i]) >= 0) return bodyFinding("evidence is not sorted by hash and unique");
  }
  if (!equalBytes(merkleRoot(body.evidence.map((item) => item.canonical)), header.evidenceRoot)) return bodyFinding("evidence root does not match the body");
  const lastCommitHash = body.lastCommit === null ? ZERO_HASH : commitHash(body.lastCommit);
  if (!equalBytes(lastCommitHash, header.lastCommitHash)) return bodyFinding("last commit hash does not match the body");
  if ((body.lastCommit === null) !== (header.height === 1)) {
    return bodyFinding("a block carries the previous commit exactly when its height is above 1");
  }
  if (body.lastCommit !== null && body.lastCommit.height !== header.height - 1) {
    return bodyFinding(`last commit is for height ${body.lastCommit.height}, not ${header.height - 1}`);
  }
  if (body.lastCommit !== null && !equalBytes(body.lastCommit.blockHash, header.previousBlockHash)) {
    return bodyFinding("last commit is not for the previous block");
  }
  return null;
}
