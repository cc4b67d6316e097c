// @ts-check
/**
 * The cryptographic primitives, from maintained audited libraries (@noble/hashes,
 * @noble/curves, @noble/post-quantum). The only module that imports them: the build puts it in
 * its own file (crypto.js), which pages load beside their own code.
 */

import { ed25519 } from "@noble/curves/ed25519.js";
import { hmac } from "@noble/hashes/hmac.js";
import { sha256 as nobleSha256, sha512 } from "@noble/hashes/sha2.js";
import { ml_dsa65 } from "@noble/post-quantum/ml-dsa.js";

/** @param {Uint8Array} data */
export function sha256(data) {
  return nobleSha256(data);
}

/** @param {Uint8Array} key @param {Uint8Array} message */
export function hmacSha512(key, message) {
  return hmac(sha512, key, message);
}

/**
 * Is ``signature`` the holder of ``publicKey``'s signature over ``message``? Never throws.
 * ML-DSA-65 is FIPS 204's pure variant with an empty context (what ``cryptography`` signs);
 * Ed25519 is RFC 8032 strict (no ZIP-215 leniency), as OpenSSL verifies it.
 * @param {string} algorithm "ml-dsa-65" or "ed25519"
 * @param {Uint8Array} publicKey @param {Uint8Array} message @param {Uint8Array} signature
 */
export function verifySignature(algorithm, publicKey, message, signature) {
  try {
    if (algorithm === "ml-dsa-65") return ml_dsa65.verify(signature, message, publicKey);
    if (algorithm === "ed25519") return ed25519.verify(signature, message, publicKey, { zip215: false });
  } catch {
    return false;
  }
  return false;
}
