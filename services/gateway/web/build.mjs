// Builds the explorer's assets into dist/ (git-ignored; `make install` runs it after `npm ci`):
//   app.js      the pages (src/main.js and what it imports), minified, one ES module
//   crypto.js   the cryptographic libraries (src/core/crypto.js: @noble/*), its own file, so a
//               page's own weight can be told apart from the crypto library's
//   style.css, index.html, docs.html, docs-init.js, docs/ (Swagger UI from swagger-ui-dist)
// and a .gz beside every file (served when the browser accepts gzip). Same inputs, same bytes.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "dist");
rmSync(dist, { recursive: true, force: true });
mkdirSync(join(dist, "docs"), { recursive: true });

const common = { bundle: true, format: "esm", minify: true, target: "es2022", legalComments: "eof", logLevel: "warning" };
await build({ ...common, entryPoints: [join(here, "src/core/crypto.js")], outfile: join(dist, "crypto.js") });
await build({
  ...common,
  entryPoints: [join(here, "src/main.js")],
  outfile: join(dist, "app.js"),
  plugins: [{
    name: "crypto-apart",
    setup(b) {
      b.onResolve({ filter: /\/crypto\.js$/ }, (args) => (args.importer.endsWith("crypto.js") ? undefined : { path: "./crypto.js", external: true }));
    },
  }],
});
await build({ ...common, format: "iife", entryPoints: [join(here, "src/docs-init.js")], outfile: join(dist, "docs-init.js") });
copyFileSync(join(here, "src/style.css"), join(dist, "style.css"));
copyFileSync(join(here, "index.html"), join(dist, "index.html"));
copyFileSync(join(here, "docs.html"), join(dist, "docs.html"));
const swagger = join(here, "node_modules/swagger-ui-dist");
for (const name of ["swagger-ui-bundle.js", "swagger-ui.css"]) copyFileSync(join(swagger, name), join(dist, "docs", name));

/** @param {string} dir @returns {string[]} */
const files = (dir) => readdirSync(dir).flatMap((name) => (statSync(join(dir, name)).isDirectory() ? files(join(dir, name)) : [join(dir, name)]));
const sizes = {};
for (const file of files(dist)) {
  const data = readFileSync(file);
  const packed = gzipSync(data, { level: 9 });
  writeFileSync(`${file}.gz`, packed);
  sizes[relative(dist, file)] = { bytes: data.length, gzip: packed.length };
}
writeFileSync(join(dist, "sizes.json"), `${JSON.stringify(sizes, null, 1)}\n`);
console.log(Object.entries(sizes).map(([name, s]) => `${name} ${s.bytes} (${s.gzip} gzip)`).join("\n"));
