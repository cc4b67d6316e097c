// @ts-check
/**
 * Lanes (issue 22): the browser counts a header's fresh sources as the Python verifier does,
 * one per device (tests/unit/test_qrng_lanes.py has the same cases).
 */

import assert from "node:assert/strict";
import { test } from "node:test";

import { committedDevices, deviceOf, freshSourcesOf } from "../src/core/block.js";

const HEALTH = { rctMaxRun: 20, aptMaxCount: 540, windows: 8, samples: 8192n, rctCutoff: 31, aptCutoff: 609, aptWindow: 1024, failures: 0 };

test("the device of a source id", () => {
  const cases = [
    ["qrng-0", "qrng-0"], ["qrng-0.lane-0", "qrng-0"], ["qrng-0.lane-17", "qrng-0"],
    ["a.b.lane-2", "a.b"], ["qrng-0.lane-", "qrng-0.lane-"], ["qrng-0.lane-x", "qrng-0.lane-x"],
    [".lane-1", ".lane-1"], ["qrng-0.lanes-1", "qrng-0.lanes-1"],
  ];
  for (const [sourceId, device] of cases) assert.equal(deviceOf(sourceId), device, sourceId);
});

test("lanes of one device are one fresh source", () => {
  const ref = (/** @type {string} */ sourceId, committed = true) => ({ sourceId, seq: 1, digest: new Uint8Array(32), nextDigest: new Uint8Array(32), committed, health: HEALTH, canonical: new Uint8Array(0) });
  const all = ["qd.lane-0", "qd.lane-1", "other", "a", "b"];
  assert.equal(freshSourcesOf([ref("qd.lane-0"), ref("qd.lane-1")], all), 1);
  assert.equal(freshSourcesOf([ref("qd.lane-0"), ref("other")], all), 2);
  assert.equal(freshSourcesOf([ref("a"), ref("b")], all), 2);
  assert.equal(committedDevices([ref("qd.lane-0"), ref("qd.lane-1")]), 1);
});

test("only committed chunks following the previous block are fresh", () => {
  const ref = (/** @type {string} */ sourceId, committed = true) => ({ sourceId, seq: 1, digest: new Uint8Array(32), nextDigest: new Uint8Array(32), committed, health: HEALTH, canonical: new Uint8Array(0) });
  assert.equal(freshSourcesOf([ref("a"), ref("b", false)], ["a", "b"]), 1);
  assert.equal(freshSourcesOf([ref("a"), ref("b")], ["a"]), 1);
  assert.equal(committedDevices([ref("a"), ref("b", false)]), 1);
});
