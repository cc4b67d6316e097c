// @ts-check
/**
 * SP 800-90B health in the chain (protocol/entropy/chain.py ``HealthSummary``, protocol/block.py
 * ``unhealthy_entropy``, protocol/pulse.py ``health_by_source``).
 *
 * Every entropy reference of a block ends with the health summary of the windows its chunk's
 * bytes came from: ``u32 rct_max_run | u32 apt_max_count | u32 windows | u64 samples |
 * u32 rct_cutoff | u32 apt_cutoff | u32 apt_window | u32 failures``. A block is valid only when
 * every summary passes: no failing window, the longest run below the RCT cutoff, the highest APT
 * count below the APT cutoff, at least one window, and samples = windows x apt_window. The page
 * checks that on the bytes it decoded, and folds the summaries per source for people to read.
 */

/**
 * @typedef {{rctMaxRun: number, aptMaxCount: number, windows: number, samples: bigint,
 *   rctCutoff: number, aptCutoff: number, aptWindow: number, failures: number}} HealthSummary
 */
/**
 * @typedef {{sourceId: string, rctCutoff: number, aptCutoff: number, aptWindow: number,
 *   chunks: number, windows: number, samples: bigint, rctMaxRun: number, aptMaxCount: number,
 *   failures: number}} SourceHealth
 */

/** @param {import("./canonical.js").CanonicalReader} r @returns {HealthSummary} */
export function readHealth(r) {
  return {
    rctMaxRun: r.u32(), aptMaxCount: r.u32(), windows: r.u32(), samples: r.u64(),
    rctCutoff: r.u32(), aptCutoff: r.u32(), aptWindow: r.u32(), failures: r.u32(),
  };
}

/** @param {import("./canonical.js").CanonicalWriter} w @param {HealthSummary} h */
export function writeHealth(w, h) {
  return w.u32(h.rctMaxRun).u32(h.aptMaxCount).u32(h.windows).u64(h.samples)
    .u32(h.rctCutoff).u32(h.aptCutoff).u32(h.aptWindow).u32(h.failures);
}

/** From the API's JSON (``HealthSummary.to_json``). @param {any} json @returns {HealthSummary} */
export function healthFromJson(json) {
  return {
    rctMaxRun: json.rct_max_run, aptMaxCount: json.apt_max_count, windows: json.windows,
    samples: BigInt(json.samples), rctCutoff: json.rct_cutoff, aptCutoff: json.apt_cutoff,
    aptWindow: json.apt_window, failures: json.failures,
  };
}

/** Values no test run produces (the decoder refuses them), or null. @param {HealthSummary} h */
export function impossibleHealth(h) {
  if (h.failures > h.windows) return `health says ${h.failures} of ${h.windows} windows failed`;
  if (h.aptMaxCount > h.aptWindow) return `health APT count ${h.aptMaxCount} exceeds its window of ${h.aptWindow} samples`;
  return null;
}

/** Why the summary does not show passing entropy, or null (HealthSummary.failing).
 * @param {HealthSummary} h @returns {string | null} */
export function failingHealth(h) {
  if (h.failures) return `${h.failures} of ${h.windows} tested windows failed`;
  if (h.rctMaxRun >= h.rctCutoff) return `RCT: a run of ${h.rctMaxRun} reaches the cutoff ${h.rctCutoff}`;
  if (h.aptMaxCount >= h.aptCutoff) return `APT: a count of ${h.aptMaxCount} reaches the cutoff ${h.aptCutoff}`;
  if (h.windows === 0) return "no window was tested";
  if (h.samples !== BigInt(h.windows) * BigInt(h.aptWindow)) return `${h.samples} samples are not ${h.windows} windows of ${h.aptWindow}`;
  return null;
}

/** The first reference whose summary fails, as protocol/block.py words it, or null.
 * @param {{sourceId: string, seq: number, health: HealthSummary}[]} entropy */
export function unhealthyEntropy(entropy) {
  for (const ref of entropy) {
    const failing = failingHealth(ref.health);
    if (failing) return `entropy '${ref.sourceId}'/${ref.seq} did not pass its health tests: ${failing}`;
  }
  return null;
}

/** Per source and test parameters: chunks, windows and samples summed, maxima, failures summed;
 * sorted like protocol/pulse.py ``health_by_source``.
 * @param {{sourceId: string, health: HealthSummary}[]} entropy @returns {SourceHealth[]} */
export function healthBySource(entropy) {
  /** @type {Map<string, SourceHealth>} */
  const folded = new Map();
  for (const { sourceId, health: h } of entropy) {
    const key = JSON.stringify([sourceId, h.rctCutoff, h.aptCutoff, h.aptWindow]);
    const seen = folded.get(key);
    folded.set(key, seen ? {
      ...seen, chunks: seen.chunks + 1, windows: seen.windows + h.windows, samples: seen.samples + h.samples,
      rctMaxRun: Math.max(seen.rctMaxRun, h.rctMaxRun), aptMaxCount: Math.max(seen.aptMaxCount, h.aptMaxCount),
      failures: seen.failures + h.failures,
    } : {
      sourceId, rctCutoff: h.rctCutoff, aptCutoff: h.aptCutoff, aptWindow: h.aptWindow, chunks: 1,
      windows: h.windows, samples: h.samples, rctMaxRun: h.rctMaxRun, aptMaxCount: h.aptMaxCount, failures: h.failures,
    });
  }
  const order = (/** @type {SourceHealth} */ s) => [s.sourceId, s.rctCutoff, s.aptCutoff, s.aptWindow];
  return [...folded.values()].sort((a, b) => {
    const [x, y] = [order(a), order(b)];
    for (let i = 0; i < x.length; i += 1) if (x[i] !== y[i]) return x[i] < y[i] ? -1 : 1;
    return 0;
  });
}

/** Python's ``SourceHealth.to_json`` of one fold entry (for comparing with the API's JSON).
 * @param {SourceHealth} s */
export function sourceHealthJson(s) {
  return {
    source_id: s.sourceId, rct_cutoff: s.rctCutoff, apt_cutoff: s.aptCutoff, apt_window: s.aptWindow,
    chunks: s.chunks, windows: s.windows, samples: Number(s.samples), rct_max_run: s.rctMaxRun,
    apt_max_count: s.aptMaxCount, failures: s.failures,
  };
}
