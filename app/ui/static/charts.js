// Charts drawn as inline SVG: the dashboard loads nothing from outside the service.

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed"];

function svgNode(name, attributes = {}, text = null) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== null) node.textContent = text;
  return node;
}

function extent(values) {
  let low = Math.min(...values);
  let high = Math.max(...values);
  if (low === high) { low -= 0.5; high += 0.5; }
  return [low, high];
}

function tick(value) {
  return Math.abs(value) >= 100 ? value.toFixed(0) : Number(value.toPrecision(3)).toString();
}

// series: [{name, points: [[x, y], ...]}]; one SVG with axes, a line per series and a legend.
export function lineChart(series, { title = "", xLabel = "step", width = 560, height = 240 } = {}) {
  const drawn = series.filter((s) => s.points.length > 0);
  const svg = svgNode("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img",
                                "aria-label": title });
  svg.appendChild(svgNode("text", { x: 8, y: 16, class: "chart-title" }, title));
  if (drawn.length === 0) {
    svg.appendChild(svgNode("text", { x: width / 2, y: height / 2, class: "chart-empty",
                                      "text-anchor": "middle" }, "no points yet"));
    return svg;
  }
  const pad = { left: 52, right: 12, top: 28, bottom: 34 };
  const all = drawn.flatMap((s) => s.points);
  const [x0, x1] = extent(all.map((p) => p[0]));
  const [y0, y1] = extent(all.map((p) => p[1]));
  const sx = (x) => pad.left + ((x - x0) / (x1 - x0)) * (width - pad.left - pad.right);
  const sy = (y) => height - pad.bottom - ((y - y0) / (y1 - y0)) * (height - pad.top - pad.bottom);
  for (const y of [y0, (y0 + y1) / 2, y1]) {
    svg.appendChild(svgNode("line", { x1: pad.left, x2: width - pad.right, y1: sy(y), y2: sy(y),
                                      class: "grid" }));
    svg.appendChild(svgNode("text", { x: pad.left - 6, y: sy(y) + 4, "text-anchor": "end",
                                      class: "axis" }, tick(y)));
  }
  for (const x of [x0, x1]) {
    svg.appendChild(svgNode("text", { x: sx(x), y: height - pad.bottom + 16, class: "axis",
                                      "text-anchor": "middle" }, tick(x)));
  }
  svg.appendChild(svgNode("text", { x: (width + pad.left) / 2, y: height - 4, class: "axis",
                                    "text-anchor": "middle" }, xLabel));
  drawn.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const path = s.points.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`);
    svg.appendChild(svgNode("path", { d: path.join(" "), stroke: color, fill: "none",
                                      "stroke-width": 2, class: "series", "data-series": s.name }));
    for (const p of s.points.length <= 40 ? s.points : []) {
      svg.appendChild(svgNode("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: color }));
    }
    const x = width - pad.right - 150 * (drawn.length - i);
    svg.appendChild(svgNode("rect", { x, y: 6, width: 10, height: 10, fill: color }));
    svg.appendChild(svgNode("text", { x: x + 14, y: 15, class: "legend" }, s.name));
  });
  return svg;
}

// Rows are the gold labels, columns the predicted ones; darker cells hold more rows.
export function confusionMatrix({ labels, counts }) {
  const cell = 48;
  const left = 100;
  const top = 44;
  const width = left + cell * labels.length + 8;
  const height = top + cell * labels.length + 8;
  // Drawn at its own size: a matrix of a few labels should not fill the page.
  const svg = svgNode("svg", { viewBox: `0 0 ${width} ${height}`, width, height,
                                class: "confusion", role: "img", "aria-label": "confusion matrix" });
  const most = Math.max(1, ...counts.flat());
  svg.appendChild(svgNode("text", { x: left, y: 14, class: "axis" }, "predicted →"));
  svg.appendChild(svgNode("text", { x: 4, y: 14, class: "axis" }, "gold ↓"));
  labels.forEach((label, i) => {
    svg.appendChild(svgNode("text", { x: left + cell * i + cell / 2, y: top - 8,
                                      "text-anchor": "middle", class: "axis" }, label.slice(0, 8)));
    svg.appendChild(svgNode("text", { x: left - 6, y: top + cell * i + cell / 2 + 4,
                                      "text-anchor": "end", class: "axis" }, label.slice(0, 14)));
  });
  counts.forEach((row, i) => row.forEach((count, j) => {
    const shade = count / most;
    svg.appendChild(svgNode("rect", {
      x: left + cell * j, y: top + cell * i, width: cell - 2, height: cell - 2,
      fill: i === j ? `rgba(5,150,105,${0.1 + 0.9 * shade})` : `rgba(220,38,38,${0.08 + 0.9 * shade})`,
      class: "cell" }));
    svg.appendChild(svgNode("text", { x: left + cell * j + cell / 2 - 1,
                                      y: top + cell * i + cell / 2 + 4, "text-anchor": "middle",
                                      class: shade > 0.6 ? "count dark" : "count" }, String(count)));
  }));
  return svg;
}

// bars: [{name, value}] with values in [0, 1] (per-type F1).
export function barChart(bars, { title = "" } = {}) {
  const row = 24;
  const width = 420;
  const svg = svgNode("svg", { viewBox: `0 0 ${width} ${28 + row * bars.length}`, class: "bars",
                                role: "img", "aria-label": title });
  svg.appendChild(svgNode("text", { x: 4, y: 16, class: "chart-title" }, title));
  bars.forEach((bar, i) => {
    const y = 26 + row * i;
    svg.appendChild(svgNode("text", { x: 80, y: y + 14, "text-anchor": "end", class: "axis" },
                            bar.name));
    svg.appendChild(svgNode("rect", { x: 88, y, width: 260 * Math.max(0, Math.min(1, bar.value)),
                                      height: row - 6, fill: COLORS[0], class: "bar" }));
    svg.appendChild(svgNode("text", { x: 356, y: y + 14, class: "axis" }, bar.value.toFixed(3)));
  });
  return svg;
}
