// @ts-check
/**
 * The canonical encoding (protocol/canonical.py), read and written.
 *
 * A message starts with its domain tag (u16 length + ASCII "QuStream/v1/<Name>"); integers are
 * big-endian with a fixed width; byte strings and text are u32 length + bytes; optionals are
 * u8 0/1 + value; sequences are u32 count + items. The reader is strict like Python's: a wrong
 * tag, short input, trailing bytes or a boolean other than 0/1 is an error, so one value has
 * exactly one encoding (and so one hash).
 */

import { concat, fromUtf8, utf8 } from "./bytes.js";

export const TAG_PREFIX = "QuStream/v1/";
export const HASH_SIZE = 32;

export class CanonicalDecodeError extends Error {}

/** @param {string} name */
function tagHeader(name) {
  const tag = utf8(TAG_PREFIX + name);
  const out = new Uint8Array(2 + tag.length);
  new DataView(out.buffer).setUint16(0, tag.length);
  out.set(tag, 2);
  return out;
}

/** The message name of a canonical message ("Transfer" for "QuStream/v1/Transfer").
 * @param {Uint8Array} data */
export function readTag(data) {
  if (data.length < 2) throw new CanonicalDecodeError("message too short for a domain tag");
  const length = (data[0] << 8) | data[1];
  if (data.length < 2 + length) throw new CanonicalDecodeError("truncated domain tag");
  const tag = String.fromCharCode(...data.subarray(2, 2 + length));
  if (!tag.startsWith(TAG_PREFIX)) throw new CanonicalDecodeError(`domain tag ${JSON.stringify(tag)} is not a QuStream v1 tag`);
  return tag.slice(TAG_PREFIX.length);
}

export class CanonicalReader {
  /** @param {Uint8Array} data @param {string} name the expected message name */
  constructor(data, name) {
    this.data = data;
    this.view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const header = tagHeader(name);
    const starts = data.length >= header.length && header.every((byte, i) => data[i] === byte);
    if (!starts) throw new CanonicalDecodeError(`expected a ${name} message, found ${readTag(data)}`);
    this.offset = header.length;
  }

  /** @param {number} count */
  take(count) {
    const end = this.offset + count;
    if (end > this.data.length) throw new CanonicalDecodeError("message is truncated");
    const out = this.data.subarray(this.offset, end);
    this.offset = end;
    return out;
  }

  u8() { return this.take(1)[0]; }
  u16() { const at = this.offset; this.take(2); return this.view.getUint16(at); }
  u32() { const at = this.offset; this.take(4); return this.view.getUint32(at); }
  /** @returns {bigint} */
  u64() { const at = this.offset; this.take(8); return this.view.getBigUint64(at); }
  /** A u64 that must fit a JavaScript number exactly (heights, times, sequence numbers). */
  u64Number() {
    const value = this.u64();
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new CanonicalDecodeError(`integer ${value} is too large`);
    return Number(value);
  }
  /** @returns {bigint} */
  i64() { const at = this.offset; this.take(8); return this.view.getBigInt64(at); }
  boolean() {
    const value = this.u8();
    if (value > 1) throw new CanonicalDecodeError(`boolean byte must be 0 or 1, got ${value}`);
    return value === 1;
  }
  /** @param {number} length */
  raw(length) { return this.take(length); }
  bytes() { return this.take(this.u32()); }
  text() {
    try {
      return fromUtf8(this.bytes());
    } catch (error) {
      if (error instanceof CanonicalDecodeError) throw error;
      throw new CanonicalDecodeError("text field is not UTF-8");
    }
  }
  /** @template T @param {(reader: CanonicalReader) => T} read @returns {T | null} */
  optional(read) { return this.boolean() ? read(this) : null; }
  /** @template T @param {(reader: CanonicalReader) => T} read @param {number} limit @returns {T[]} */
  sequence(read, limit) {
    const count = this.u32();
    if (count > limit) throw new CanonicalDecodeError(`sequence of ${count} items exceeds the limit ${limit}`);
    const items = [];
    for (let i = 0; i < count; i += 1) items.push(read(this));
    return items;
  }
  nested() { return this.bytes(); }
  done() {
    if (this.offset !== this.data.length) throw new CanonicalDecodeError(`${this.data.length - this.offset} trailing bytes`);
  }
}

export class CanonicalWriter {
  /** @param {string | null} name the message name; null for a fragment without a tag */
  constructor(name) {
    /** @type {Uint8Array[]} */
    this.parts = name === null ? [] : [tagHeader(name)];
  }

  /** @param {number} size @param {(view: DataView) => void} write */
  fixed(size, write) {
    const out = new Uint8Array(size);
    write(new DataView(out.buffer));
    this.parts.push(out);
    return this;
  }

  /** @param {number} value */
  u8(value) { return this.fixed(1, (v) => v.setUint8(0, checkRange(value, 0xff))); }
  /** @param {number} value */
  u16(value) { return this.fixed(2, (v) => v.setUint16(0, checkRange(value, 0xffff))); }
  /** @param {number} value */
  u32(value) { return this.fixed(4, (v) => v.setUint32(0, checkRange(value, 0xffffffff))); }
  /** @param {number | bigint} value */
  u64(value) {
    const big = BigInt(value);
    if (big < 0n || big > 0xffffffffffffffffn) throw new RangeError(`${value} is outside u64`);
    return this.fixed(8, (v) => v.setBigUint64(0, big));
  }
  /** @param {number | bigint} value */
  i64(value) {
    const big = BigInt(value);
    if (big < -(2n ** 63n) || big >= 2n ** 63n) throw new RangeError(`${value} is outside i64`);
    return this.fixed(8, (v) => v.setBigInt64(0, big));
  }
  /** @param {boolean} value */
  boolean(value) { return this.u8(value ? 1 : 0); }
  /** @param {Uint8Array} value @param {number} length */
  raw(value, length) {
    if (value.length !== length) throw new RangeError(`expected exactly ${length} bytes`);
    this.parts.push(value);
    return this;
  }
  /** @param {Uint8Array} value */
  bytes(value) {
    this.u32(value.length);
    this.parts.push(value);
    return this;
  }
  /** @param {string} value */
  text(value) { return this.bytes(utf8(value)); }
  /** @template T @param {T | null} value @param {(writer: CanonicalWriter, item: T) => void} write */
  optional(value, write) {
    if (value === null) return this.u8(0);
    this.u8(1);
    write(this, value);
    return this;
  }
  /** @template T @param {T[]} items @param {(writer: CanonicalWriter, item: T) => void} write */
  sequence(items, write) {
    this.u32(items.length);
    for (const item of items) write(this, item);
    return this;
  }
  /** @param {Uint8Array} encoded */
  nested(encoded) { return this.bytes(encoded); }
  finish() { return concat(...this.parts); }
}

/** @param {number} value @param {number} high */
function checkRange(value, high) {
  if (!Number.isInteger(value) || value < 0 || value > high) throw new RangeError(`${value} is outside 0..${high}`);
  return value;
}
