// @ts-check
/** Byte helpers shared by the verification modules (hex, base64, UTF-8, comparison). */

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** @param {Uint8Array} bytes */
export function toHex(bytes) {
  let out = "";
  for (const byte of bytes) out += byte.toString(16).padStart(2, "0");
  return out;
}

/** @param {string} hex */
export function fromHex(hex) {
  if (hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) throw new Error(`not hex: ${hex.slice(0, 16)}`);
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i += 1) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** @param {string} text standard base64 */
export function fromBase64(text) {
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) out[i] = binary.charCodeAt(i);
  return out;
}

/** @param {Uint8Array} bytes */
export function toBase64(bytes) {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}

/** @param {string} text */
export function utf8(text) {
  return encoder.encode(text);
}

/** Strict UTF-8 decoding (throws on invalid input, like Python's ``decode("utf-8")``).
 * @param {Uint8Array} bytes */
export function fromUtf8(bytes) {
  return decoder.decode(bytes);
}

/** @param {Uint8Array[]} parts */
export function concat(...parts) {
  let size = 0;
  for (const part of parts) size += part.length;
  const out = new Uint8Array(size);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** Lexicographic order of byte strings (Python's ``bytes`` order).
 * @param {Uint8Array} a @param {Uint8Array} b @returns {number} */
export function compareBytes(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i += 1) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

/** @param {Uint8Array} a @param {Uint8Array} b */
export function equalBytes(a, b) {
  return a.length === b.length && compareBytes(a, b) === 0;
}

/** Code-point order of strings (Python's ``str`` order): UTF-8 bytes sort the same way.
 * @param {string} a @param {string} b */
export function compareText(a, b) {
  return compareBytes(utf8(a), utf8(b));
}
