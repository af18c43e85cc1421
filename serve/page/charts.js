// Line charts drawn by hand as SVG (no library): one polyline per series over a shared x axis, with
// tick labels, a point per value (its value in a tooltip) and gaps where a value is missing.
'use strict';
window.vsrCharts = (() => {
  const SVG = 'http://www.w3.org/2000/svg';
  const SIZE = { width: 360, height: 200, left: 48, right: 10, top: 10, bottom: 28 };
  const PALETTE = ['#0b5fff', '#d1242f', '#1a7f37', '#8250df', '#bf8700', '#0a7b83', '#cf222e', '#57606a'];

  const node = (tag, attrs = {}, text = null) => {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (text !== null) el.textContent = text;
    return el;
  };

  function ticks(lo, hi, count = 4) {
    if (lo === hi) return [lo];
    const step = (hi - lo) / count;
    return Array.from({ length: count + 1 }, (_, i) => lo + i * step);
  }

  function format(v, span) {
    if (Math.abs(v) >= 1000) return v.toFixed(0);
    const digits = span >= 10 ? 0 : span >= 1 ? 1 : span >= 0.1 ? 2 : 3;
    return v.toFixed(digits);
  }

  // series: [{name, color, x: [..], y: [..]}]; y values may be null (a gap).
  function lineChart(svg, series, { xLabel = 'step', label = '' } = {}) {
    svg.replaceChildren();
    svg.setAttribute('viewBox', `0 0 ${SIZE.width} ${SIZE.height}`);
    svg.setAttribute('role', 'img');
    svg.setAttribute('aria-label', `${label}: ${series.map((s) => s.name).join(', ') || 'no trial selected'}`);
    const points = series.flatMap((s) => s.x.map((x, i) => [x, s.y[i]]).filter(([, y]) => y !== null && isFinite(y)));
    if (!points.length) {
      svg.append(node('text', { x: SIZE.width / 2, y: SIZE.height / 2, 'text-anchor': 'middle', class: 'chart-empty' },
                      'no values yet'));
      return;
    }
    const xs = points.map((p) => p[0]);
    const ys = points.map((p) => p[1]);
    let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    if (x0 === x1) x1 = x0 + 1;
    if (y0 === y1) { y0 -= 0.5; y1 += 0.5; }
    const pad = (y1 - y0) * 0.05;
    y0 -= pad; y1 += pad;
    const w = SIZE.width - SIZE.left - SIZE.right;
    const h = SIZE.height - SIZE.top - SIZE.bottom;
    const sx = (x) => SIZE.left + ((x - x0) / (x1 - x0)) * w;
    const sy = (y) => SIZE.top + (1 - (y - y0) / (y1 - y0)) * h;
    svg.append(node('rect', { x: SIZE.left, y: SIZE.top, width: w, height: h, class: 'chart-frame' }));
    for (const t of ticks(y0, y1)) {
      svg.append(node('line', { x1: SIZE.left, x2: SIZE.left + w, y1: sy(t), y2: sy(t), class: 'chart-grid' }));
      svg.append(node('text', { x: SIZE.left - 4, y: sy(t) + 3, 'text-anchor': 'end', class: 'chart-tick' }, format(t, y1 - y0)));
    }
    const integers = xs.every(Number.isInteger); // steps: whole tick labels
    for (const t of ticks(x0, x1)) {
      svg.append(node('text', { x: sx(t), y: SIZE.top + h + 14, 'text-anchor': 'middle', class: 'chart-tick' },
                      integers ? String(Math.round(t)) : format(t, x1 - x0)));
    }
    svg.append(node('text', { x: SIZE.left + w, y: SIZE.height - 2, 'text-anchor': 'end', class: 'chart-tick' }, xLabel));
    for (const s of series) {
      const segments = [[]]; // a missing value ends a segment: the line has a gap there
      s.x.forEach((x, i) => {
        const y = s.y[i];
        if (y === null || !isFinite(y)) segments.push([]);
        else segments[segments.length - 1].push(`${sx(x).toFixed(1)},${sy(y).toFixed(1)}`);
      });
      const d = segments.filter((seg) => seg.length).map((seg) => `M${seg.join('L')}`).join(' ');
      const line = node('path', { d, fill: 'none', stroke: s.color, 'stroke-width': 2, class: 'chart-line' });
      line.dataset.series = s.name;
      svg.append(line);
      s.x.forEach((x, i) => {
        if (s.y[i] === null || !isFinite(s.y[i])) return;
        const dot = node('circle', { cx: sx(x), cy: sy(s.y[i]), r: 2.5, fill: s.color });
        dot.append(node('title', {}, `${s.name}: ${s.y[i].toPrecision(4)} at ${xLabel} ${x}`));
        svg.append(dot);
      });
    }
  }

  return { lineChart, PALETTE };
})();
