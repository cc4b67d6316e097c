// @ts-check
/**
 * Public keys, addresses and validator sets (protocol/keys.py, protocol/validators.py).
 *
 * An address is the first 20 bytes of SHA-256 of the key's canonical encoding; a set is sorted
 * by address and its hash is SHA-256 of its canonical encoding, which every header names.
 */

import { compareBytes, equalBytes, fromBase64, fromHex, toHex } from "./bytes.js";
import { CanonicalWriter } from "./canonical.js";
import { ADDRESS_SIZE } from "./commit.js";
import { sha256 } from "./crypto.js";

/** @typedef {import("./commit.js").Validator} Validator */

const PUBLIC_SIZES = /** @type {Record<string, number>} */ ({ "ml-dsa-65": 1952, ed25519: 32 });

export class ValidatorSetError extends Error {}

/** ``<algorithm>:<base64>`` -> algorithm and raw key.
 * @param {string} text */
export function parsePublicKey(text) {
  const at = text.indexOf(":");
  const algorithm = text.slice(0, at).toLowerCase();
  if (at < 0 || !(algorithm in PUBLIC_SIZES)) throw new ValidatorSetError(`unknown public key ${text.slice(0, 24)}`);
  const raw = fromBase64(text.slice(at + 1));
  if (raw.length !== PUBLIC_SIZES[algorithm]) throw new ValidatorSetError(`${algorithm} public key must be ${PUBLIC_SIZES[algorithm]} bytes`);
  return { algorithm, raw };
}

/** @param {string} algorithm @param {Uint8Array} raw */
export function publicKeyCanonical(algorithm, raw) {
  return new CanonicalWriter("PublicKey").text(algorithm).bytes(raw).finish();
}

/** @param {string} algorithm @param {Uint8Array} raw */
export function addressOf(algorithm, raw) {
  return sha256(publicKeyCanonical(algorithm, raw)).subarray(0, ADDRESS_SIZE);
}

/**
 * The set served as JSON (``[{address, public_key, power}]``), checked like the Python
 * ``ValidatorSet``: addresses derive from the keys, powers are positive, no duplicates;
 * returned in canonical (address) order.
 * @param {{address: string, public_key: string, power: number | string}[]} items
 * @returns {Validator[]}
 */
export function validatorSetFromJson(items) {
  if (items.length === 0) throw new ValidatorSetError("a validator set cannot be empty");
  const validators = items.map((item) => {
    const { algorithm, raw } = parsePublicKey(item.public_key);
    const address = fromHex(item.address);
    if (!equalBytes(address, addressOf(algorithm, raw))) {
      throw new ValidatorSetError(`validator ${item.address} address does not match its public key`);
    }
    const power = BigInt(item.power);
    if (power <= 0n) throw new ValidatorSetError(`validator ${item.address} has non-positive power ${power}`);
    return { address, algorithm, publicKey: raw, power };
  });
  validators.sort((a, b) => compareBytes(a.address, b.address));
  for (let i = 1; i < validators.length; i += 1) {
    if (equalBytes(validators[i - 1].address, validators[i].address)) throw new ValidatorSetError(`duplicate validator ${toHex(validators[i].address)}`);
  }
  return validators;
}

/** @param {Validator[]} validators in canonical order */
export function validatorSetHash(validators) {
  const writer = new CanonicalWriter("ValidatorSet").sequence(validators, (w, v) =>
    w.nested(new CanonicalWriter("Validator").raw(v.address, ADDRESS_SIZE).nested(publicKeyCanonical(v.algorithm, v.publicKey)).u64(v.power).finish()));
  return sha256(writer.finish());
}
