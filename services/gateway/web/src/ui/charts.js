// @ts-check
/** Small hand-drawn SVG charts (no chart library: a few lines each, nothing to download). */

const NS = "http://www.w3.org/2000/svg";

/** @param {string} tag @param {Record<string, string | number>} attrs @param {string} [text] */
function svg(tag, attrs, text) {
  const node = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

/**
 * A line chart of ``points`` ([x, y], x ascending) with min/max labels.
 * @param {[number, number][]} points
 * @param {{label: string, unit: string, xLabel?: (x: number) => string}} options
 */
export function lineChart(points, { label, unit, xLabel = (x) => String(x) }) {
  const width = 600, height = 180, left = 48, right = 10, top = 22, bottom = 24;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": label });
  root.append(svg("text", { x: left, y: 14 }, label));
  if (points.length < 2) {
    root.append(svg("text", { x: left, y: height / 2 }, "not enough blocks yet"));
    return root;
  }
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const [y0, y1] = [0, Math.max(...ys, 1)];
  const sx = (/** @type {number} */ x) => left + ((x - x0) / Math.max(1, x1 - x0)) * (width - left - right);
  const sy = (/** @type {number} */ y) => height - bottom - ((y - y0) / (y1 - y0)) * (height - top - bottom);
  for (const y of [y0, (y0 + y1) / 2, y1]) {
    root.append(svg("line", { x1: left, x2: width - right, y1: sy(y), y2: sy(y), class: "grid" }));
    root.append(svg("text", { x: 4, y: sy(y) + 4 }, `${Math.round(y)} ${unit}`));
  }
  root.append(svg("polyline", { class: "line", points: points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ") }));
  root.append(svg("text", { x: left, y: height - 6 }, xLabel(x0)));
  root.append(svg("text", { x: width - right, y: height - 6, "text-anchor": "end" }, xLabel(x1)));
  return root;
}

/**
 * A strip of cells, one per block: signed (green), missed (red), not in the set (grey).
 * @param {string} marks "1" signed, "0" missed, "-" not a member
 */
export function uptimeStrip(marks) {
  const cells = Math.max(1, marks.length);
  const root = svg("svg", { viewBox: `0 0 ${cells * 4} 12`, preserveAspectRatio: "none", class: "strip", role: "img", "aria-label": `signed ${marks.split("1").length - 1} of ${marks.replaceAll("-", "").length} blocks` });
  [...marks].forEach((mark, i) => {
    root.append(svg("rect", { x: i * 4, y: 0, width: 3.4, height: 12, fill: mark === "1" ? "#2e9d63" : mark === "0" ? "#d2453b" : "#d6d9e0" }));
  });
  return root;
}

/** A sparkline of a rate history. @param {[number, number][]} points */
export function sparkline(points) {
  const width = 200, height = 36;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "spark", role: "img", "aria-label": "rate history" });
  if (points.length < 2) return root;
  const ys = points.map((p) => p[1]);
  const max = Math.max(...ys, 1);
  const step = width / (points.length - 1);
  root.append(svg("polyline", { fill: "none", stroke: "#3347b8", "stroke-width": 1.5, points: ys.map((y, i) => `${(i * step).toFixed(1)},${(height - 2 - (y / max) * (height - 4)).toFixed(1)}`).join(" ") }));
  return root;
}
