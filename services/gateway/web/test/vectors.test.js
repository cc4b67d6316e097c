// @ts-check
/**
 * The browser's decoder and verifier against the golden vectors the Python tests use
 * (tests/vectors/): when the block format changes there, this fails until the JS follows.
 */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { decodeBlock, decodeBody, decodeHeader, blockHash, structuralProblem } from "../src/core/block.js";
import { merkleRoot } from "../src/core/merkle.js";
import { concat, fromHex, fromUtf8, toHex } from "../src/core/bytes.js";
import { CanonicalReader, CanonicalWriter } from "../src/core/canonical.js";
import { FLAGS, verifyCommit } from "../src/core/commit.js";
import { failingHealth, healthBySource, healthFromJson, sourceHealthJson, unhealthyEntropy, writeHealth } from "../src/core/health.js";
import { pulseOf } from "../src/core/pulse.js";
import { blockRandomness, genesisRandomness } from "../src/core/randomness.js";
import { addressOf, parsePublicKey, validatorSetFromJson } from "../src/core/validators.js";

const VECTORS = new URL("../../../../tests/vectors/", import.meta.url);
/** @param {string} path @returns {any} */
const load = (path) => JSON.parse(readFileSync(new URL(path, VECTORS), "utf8"));

/** Write and read one field of the canonical vectors (tests/unit/test_canonical.py's kinds). */
const FIELD_KINDS = /** @type {Record<string, {write: (w: CanonicalWriter, v: any) => void, read: (r: CanonicalReader) => any}>} */ ({
  u8: { write: (w, v) => w.u8(v), read: (r) => r.u8() },
  u16: { write: (w, v) => w.u16(v), read: (r) => r.u16() },
  u32: { write: (w, v) => w.u32(v), read: (r) => r.u32() },
  u64: { write: (w, v) => w.u64(v), read: (r) => Number(r.u64()) },
  i64: { write: (w, v) => w.i64(v), read: (r) => Number(r.i64()) },
  bytes: { write: (w, v) => w.bytes(fromHex(v)), read: (r) => toHex(r.bytes()) },
  text: { write: (w, v) => w.text(v), read: (r) => r.text() },
  bool: { write: (w, v) => w.boolean(v), read: (r) => r.boolean() },
  optional_u64: { write: (w, v) => w.optional(v, (x, n) => x.u64(n)), read: (r) => r.optional((x) => Number(x.u64())) },
  seq_text: { write: (w, v) => w.sequence(v, (x, s) => x.text(s)), read: (r) => r.sequence((x) => x.text(), 1000) },
  raw32: { write: (w, v) => w.raw(fromHex(v), 32), read: (r) => toHex(r.raw(32)) },
});

test("canonical encoding: every vector is written and read back exactly", () => {
  const vectors = load("canonical/vectors.json");
  assert.ok(vectors.length >= 5);
  for (const vector of vectors) {
    const writer = new CanonicalWriter(vector.tag);
    for (const [kind, value] of vector.fields) {
      assert.ok(kind in FIELD_KINDS, `unknown field kind ${kind}: teach the JS writer/reader`);
      FIELD_KINDS[kind].write(writer, value);
    }
    assert.equal(toHex(writer.finish()), vector.encoding, vector.tag);
    const reader = new CanonicalReader(fromHex(vector.encoding), vector.tag);
    for (const [kind, value] of vector.fields) assert.deepEqual(FIELD_KINDS[kind].read(reader), value, vector.tag);
    reader.done();
  }
});

test("canonical reader is strict: wrong tag, truncation, trailing bytes, bad boolean", () => {
  const encoding = fromHex(load("canonical/vectors.json")[3].encoding); // Optional
  assert.throws(() => new CanonicalReader(encoding, "Sequence"), /expected a Sequence message/);
  const reader = new CanonicalReader(encoding.subarray(0, encoding.length - 1), "Optional");
  reader.optional((r) => r.u64());
  reader.optional((r) => r.u64());
  reader.boolean();
  assert.throws(() => reader.boolean(), /truncated/);
  const trailing = new CanonicalReader(concat(encoding, Uint8Array.of(0)), "Optional");
  trailing.optional((r) => r.u64()); trailing.optional((r) => r.u64()); trailing.boolean(); trailing.boolean();
  assert.throws(() => trailing.done(), /1 trailing bytes/);
  const badBool = encoding.slice();
  badBool[badBool.length - 1] = 2;
  const bad = new CanonicalReader(badBool, "Optional");
  bad.optional((r) => r.u64()); bad.optional((r) => r.u64()); bad.boolean();
  assert.throws(() => bad.boolean(), /boolean byte/);
});

/** The header fields the JS decoder knows, named as the vectors name them. */
const HEADER_FIELDS = {
  chain_id: "chainId", height: "height", round: "round", time_ms: "timeMs",
  previous_block_hash: "previousBlockHash", last_commit_hash: "lastCommitHash",
  entropy_root: "entropyRoot", entropy_ranges: "entropyRanges", fresh_sources: "freshSources",
  registered_sources: "registeredSources", randomness: "randomness",
  tx_root: "txRoot", evidence_root: "evidenceRoot", validators_hash: "validatorsHash",
  next_validators_hash: "nextValidatorsHash", app_hash: "appHash", proposer_address: "proposerAddress",
  history_root: "historyRoot",
};

/** @param {any} value */
const plain = (value) => (value instanceof Uint8Array ? toHex(value) : value);

/** @param {import("../src/core/commit.js").Commit} commit */
const commitJson = (commit) => ({
  height: commit.height, round: commit.round, block_hash: toHex(commit.blockHash),
  signatures: commit.signatures.map((s) => ({ flag: FLAGS[s.flag].toLowerCase(), validator_address: toHex(s.validatorAddress), signature: toHex(s.signature) })),
});

/** @param {import("../src/core/block.js").Vote} vote */
const voteJson = (vote) => ({
  type: vote.type === 1 ? "prevote" : "precommit", height: vote.height, round: vote.round,
  block_hash: vote.blockHash === null ? null : toHex(vote.blockHash),
  validator_address: toHex(vote.validatorAddress), signature: toHex(vote.signature),
});

test("blocks: headers and bodies decode to the vector's fields, hashes and links match", () => {
  const { blocks } = load("blocks/chain.json");
  assert.ok(blocks.length >= 5 && blocks.some((/** @type {any} */ b) => b.body.evidence.length > 0));
  /** @type {Uint8Array | null} */
  let previous = null;
  for (const entry of blocks) {
    assert.deepEqual(Object.keys(entry.header).sort(), Object.keys(HEADER_FIELDS).sort(),
      "the header has fields the JS decoder does not know (or lost some): update src/core/block.js");
    const headerBytes = fromHex(entry.expected.header_canonical);
    const header = /** @type {Record<string, any>} */ (decodeHeader(headerBytes));
    for (const [name, js] of Object.entries(HEADER_FIELDS)) {
      const got = name === "entropy_ranges" ? header[js].map((/** @type {any} */ r) => [r.sourceId, r.first, r.last]) : plain(header[js]);
      assert.deepEqual(got, entry.header[name], `height ${entry.header.height} ${name}`);
    }
    assert.equal(toHex(blockHash(headerBytes)), entry.expected.block_hash);
    const body = decodeBody(fromHex(entry.expected.body_canonical));
    assert.deepEqual(body.entropy.map((r) => [r.sourceId, r.seq, toHex(r.digest), toHex(r.nextDigest), r.committed, healthJson(r.health)]), entry.body.entropy);
    assert.deepEqual(body.txs.map(toHex), entry.body.txs);
    assert.deepEqual(body.evidence.map((e) => ({ vote_a: voteJson(e.voteA), vote_b: voteJson(e.voteB) })), entry.body.evidence);
    assert.deepEqual(body.lastCommit === null ? null : commitJson(body.lastCommit), entry.body.last_commit);
    const blockBytes = new CanonicalWriter("Block").nested(headerBytes).nested(fromHex(entry.expected.body_canonical)).finish();
    const block = decodeBlock(blockBytes);
    assert.equal(structuralProblem(block), null, `height ${entry.header.height}`);
    if (previous !== null) assert.equal(toHex(block.header.previousBlockHash), toHex(previous));
    previous = block.hash;
  }
});

/** protocol/entropy/chain.py ``HealthSummary.to_json``. @param {import("../src/core/health.js").HealthSummary} h */
const healthJson = (h) => ({
  rct_max_run: h.rctMaxRun, apt_max_count: h.aptMaxCount, windows: h.windows, samples: Number(h.samples),
  rct_cutoff: h.rctCutoff, apt_cutoff: h.aptCutoff, apt_window: h.aptWindow, failures: h.failures,
});

test("health: every vector ref passes, and a failing summary is refused as entropy_health", () => {
  const { blocks } = load("blocks/chain.json");
  for (const entry of blocks) {
    const body = decodeBody(fromHex(entry.expected.body_canonical));
    assert.equal(unhealthyEntropy(body.entropy), null);
    const folded = healthBySource(body.entropy).map(sourceHealthJson);
    assert.deepEqual(folded.map((s) => s.source_id), [...new Set(body.entropy.map((r) => r.sourceId))].sort());
    assert.equal(folded.reduce((n, s) => n + s.chunks, 0), body.entropy.length);
  }
  const entry = blocks[1];
  const headerBytes = fromHex(entry.expected.header_canonical);
  const body = decodeBody(fromHex(entry.expected.body_canonical));
  const base = body.entropy[0].health;
  const failing = [{ ...base, failures: 1 }, { ...base, rctMaxRun: base.rctCutoff }, { ...base, aptMaxCount: base.aptCutoff },
    { ...base, windows: 0, samples: 0n }, { ...base, samples: base.samples + 1n }];
  for (const health of failing) {
    assert.notEqual(failingHealth(health), null);
    const entropy = body.entropy.map((ref, i) => i === 0 ? { ...ref, health } : ref);
    // The ref bytes change with the summary; rebuild them the way a proposer would.
    const rebuilt = entropy.map((ref) => ({ ...ref, canonical: writeHealth(new CanonicalWriter("EntropyRef").text(ref.sourceId).u64(ref.seq).raw(ref.digest, 32).raw(ref.nextDigest, 32).boolean(ref.committed), ref.health).finish() }));
    const block = { header: decodeHeader(headerBytes), body: { ...body, entropy: rebuilt }, hash: blockHash(headerBytes) };
    const root = structuralProblem(block);
    // the root no longer matches the header (the header commits to the ref bytes); with a
    // header over the new root, the health rule is what remains
    assert.equal(root?.check, "entropy_root");
    const header = { ...block.header, entropyRoot: merkleRoot(rebuilt.map((ref) => ref.canonical)) };
    assert.equal(structuralProblem({ ...block, header })?.check, "entropy_health");
  }
});

test("blocks: a changed body is named by the check it breaks", () => {
  const entry = load("blocks/chain.json").blocks[1];
  const headerBytes = fromHex(entry.expected.header_canonical);
  const bodyBytes = fromHex(entry.expected.body_canonical);
  const digest = entry.body.entropy[0][2];
  const at = toHex(bodyBytes).indexOf(digest) / 2;
  const changed = bodyBytes.slice();
  changed[at] ^= 1;
  const block = decodeBlock(new CanonicalWriter("Block").nested(headerBytes).nested(changed).finish());
  assert.deepEqual(structuralProblem(block), { check: "entropy_root", reason: "entropy root does not match the body" });
  assert.throws(() => decodeBlock(concat(new CanonicalWriter("Block").nested(headerBytes).nested(bodyBytes).finish(), Uint8Array.of(0))), /trailing/);
});

for (const [file, algorithm] of [["commit/cases.json", "ed25519"], ["commit/ml_dsa_65.json", "ml-dsa-65"]]) test(`commit certificates (${algorithm}): verdict, reason and signed power as verify_commit gives them`, () => {
  const data = load(file);
  const verdicts = new Set();
  for (const entry of data.cases) {
    const validators = validatorSetFromJson(entry.validators.map((/** @type {any} */ v) => {
      const { algorithm, raw } = parsePublicKey(v.public_key);
      return { address: toHex(addressOf(algorithm, raw)), public_key: v.public_key, power: v.power };
    }));
    const cert = entry.certificate;
    const commit = {
      height: cert.height, round: cert.round, blockHash: fromHex(cert.block_hash), canonical: new Uint8Array(0),
      signatures: cert.signatures.map((/** @type {any} */ s) => ({ flag: FLAGS.indexOf(s.flag.toUpperCase()), validatorAddress: fromHex(s.validator_address), signature: fromHex(s.signature) })),
    };
    const result = verifyCommit(data.chain_id, fromHex(data.block_hash), data.height, commit, validators);
    const expected = entry.expected.verify_commit;
    assert.deepEqual([result.ok, result.reason, Number(result.signedPower)], [expected.ok, expected.reason, expected.signed_power], entry.name);
    verdicts.add(result.ok);
    assert.ok(validators.every((v) => v.algorithm === algorithm));
  }
  assert.deepEqual([...verdicts].sort(), [false, true]);
});

test("randomness: R_0 and every step of the chain", () => {
  const data = load("randomness/chain.json");
  const r0 = genesisRandomness(fromHex(data.genesis_value));
  assert.equal(toHex(r0), data.genesis_randomness);
  let previous = r0;
  for (const step of data.steps) {
    assert.equal(toHex(previous), step.previous);
    const entropy = step.entropy.map((/** @type {[string, number, string, string, boolean, any]} */ [sourceId, seq, digest, nextDigest, committed, health]) => ({ sourceId, seq, digest: fromHex(digest), nextDigest: fromHex(nextDigest), committed, health: healthFromJson(health) }));
    previous = blockRandomness(previous, step.height, entropy);
    assert.equal(toHex(previous), step.randomness, `height ${step.height}`);
  }
  assert.equal(fromUtf8(fromHex(data.genesis_value)), "qustream genesis randomness vector");
});

test("pulse status: decoded headers give protocol/pulse.py's status bits, verdict and text", () => {
  const { cases } = load("pulse/status.json");
  const seen = new Set();
  for (const entry of cases) {
    const header = decodeHeader(fromHex(entry.header_canonical));
    assert.deepEqual([header.height, header.freshSources, header.registeredSources], [entry.height, entry.fresh_sources, entry.registered_sources]);
    const pulse = pulseOf(header);
    const where = `height ${entry.height} fresh ${entry.fresh_sources} of ${entry.registered_sources}`;
    assert.deepEqual(pulse, entry.expected, where);
    seen.add(pulse.status);
  }
  assert.ok([0, 1, 256, 257, 512, 513].every((status) => seen.has(status)), [...seen].join());
});

