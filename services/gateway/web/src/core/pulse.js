// @ts-check
/**
 * Is a pulse random? (protocol/pulse.py) The status of a block's randomness, computed from its
 * header alone — from the header the page decoded and verified, never from a flag the server
 * sends.
 *
 * When a block carries no fresh entropy its randomness is a function of the previous pulse and
 * the height: anyone could compute it in advance. The header says how many registered sources
 * contributed fresh entropy (``freshSources``) and how many were registered
 * (``registeredSources``); entropy from two sources is required whenever two are registered.
 *
 * The status is a bit set anchored on the NIST Randomness Beacon 2.0 ``statusCode``: 0 "values
 * are all good", 1 the start of the chain (height 1); QuStream's own bits 256 (no fresh entropy)
 * and 512 (fewer sources than min(2, registered)) make a pulse "not random".
 */

export const PulseStatus = Object.freeze({ OK: 0, CHAIN_START: 1, NO_FRESH_ENTROPY: 256, TOO_FEW_SOURCES: 512 });
export const NOT_RANDOM = PulseStatus.NO_FRESH_ENTROPY | PulseStatus.TOO_FEW_SOURCES;
export const MIN_SOURCES_FOR_RANDOM = 2;

/** @typedef {{status: number, random: boolean, text: string}} Pulse */

/** How many sources must contribute for a pulse to count as random. @param {number} registered */
export const requiredSources = (registered) => Math.max(1, Math.min(MIN_SOURCES_FOR_RANDOM, registered));

/** The status bits of the pulse a header carries.
 * @param {{height: number, freshSources: number, registeredSources: number}} header */
export function pulseStatus(header) {
  let status = PulseStatus.OK;
  if (header.height === 1) status |= PulseStatus.CHAIN_START;
  if (header.freshSources === 0) status |= PulseStatus.NO_FRESH_ENTROPY;
  else if (header.freshSources < requiredSources(header.registeredSources)) status |= PulseStatus.TOO_FEW_SOURCES;
  return status;
}

/** @param {number} status */
export const isRandom = (status) => (status & NOT_RANDOM) === 0;

/** One line for people: "random" or what is wrong (the same words as protocol/pulse.py). @param {number} status */
export function describe(status) {
  if (status & PulseStatus.NO_FRESH_ENTROPY) return "NOT RANDOM: no fresh entropy (computable from the previous pulse)";
  if (status & PulseStatus.TOO_FEW_SOURCES) return "NOT RANDOM: fresh entropy from fewer sources than the two-source rule asks";
  return status & PulseStatus.CHAIN_START ? "random (start of the chain)" : "random";
}

/** Status, verdict and text of the pulse a header carries.
 * @param {{height: number, freshSources: number, registeredSources: number}} header @returns {Pulse} */
export function pulseOf(header) {
  const status = pulseStatus(header);
  return { status, random: isRandom(status), text: describe(status) };
}
