// @ts-check
/**
 * Lanes (issue 22): the browser counts a header's fresh sources as the Python verifier does,
 * one per device (tests/unit/test_qrng_lanes.py has the same cases).
 */

import assert from "node:assert/strict";
import { test } from "node:test";

import { deviceOf, freshSourcesOf } from "../src/core/block.js";

test("the device of a source id", () => {
  const cases = [
    ["qrng-0", "qrng-0"], ["qrng-0.lane-0", "qrng-0"], ["qrng-0.lane-17", "qrng-0"],
    ["a.b.lane-2", "a.b"], ["qrng-0.lane-", "qrng-0.lane-"], ["qrng-0.lane-x", "qrng-0.lane-x"],
    [".lane-1", ".lane-1"], ["qrng-0.lanes-1", "qrng-0.lanes-1"],
  ];
  for (const [sourceId, device] of cases) assert.equal(deviceOf(sourceId), device, sourceId);
});

test("lanes of one device are one fresh source", () => {
  const range = (/** @type {string} */ sourceId) => ({ sourceId, first: 0, last: 0 });
  assert.equal(freshSourcesOf([range("qd.lane-0"), range("qd.lane-1")]), 1);
  assert.equal(freshSourcesOf([range("qd.lane-0"), range("other")]), 2);
  assert.equal(freshSourcesOf([range("a"), range("b")]), 2);
});
