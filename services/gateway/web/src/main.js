// @ts-check
/** The explorer's entry point: one script, routed on the page's path. */

import { h, message, replace } from "./ui/dom.js";
import { beaconPage } from "./pages/beacon.js";
import { blockPage } from "./pages/block.js";
import { blocksPage } from "./pages/blocks.js";
import { homePage } from "./pages/home.js";
import { qrngPage } from "./pages/qrng.js";
import { validatorsPage } from "./pages/validators.js";

/** @param {HTMLElement} root */
async function route(root) {
  const path = location.pathname.replace(/\/+$/, "") || "/";
  const block = /^\/blocks\/(\d+)$/.exec(path);
  if (block) return blockPage(root, Number(block[1]));
  switch (path) {
    case "/": return homePage(root);
    case "/blocks": return blocksPage(root, new URLSearchParams(location.search));
    case "/validators": return validatorsPage(root);
    case "/qrng": return qrngPage(root);
    case "/beacon": return beaconPage(root, new URLSearchParams(location.search));
    default: return replace(root, h("h1", {}, "Not found"), h("p", {}, "No such page. ", h("a", { href: "/" }, "Home")));
  }
}

const root = /** @type {HTMLElement} */ (document.getElementById("app"));
route(root)
  .then(() => document.body.setAttribute("data-ready", "true"))
  .catch((error) => {
    replace(root, h("h1", {}, "Something went wrong"), h("p", { class: "muted" }, message(error)));
    document.body.setAttribute("data-ready", "error");
  });
