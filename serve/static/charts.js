/* Small canvas charts for the dashboard: a line chart (time or numeric x axis, filled bands,
 * markers, reference lines, hover read-out) and a histogram. No dependencies.
 *
 * Each chart draws at the canvas's CSS size times devicePixelRatio, and after drawing sets
 * data attributes on the canvas that say what it drew (data-points, data-series,
 * data-band-points, data-bins, data-count), so tests can check a chart without pixels.
 */
"use strict";

(function (BMS) {
  const PAD = { left: 46, right: 14, top: 12, bottom: 24 };
  const AXIS = "#9aa3b2";
  const GRID = "#edf0f4";
  const TEXT = "#5b6577";
  const FONT = '11px system-ui, "DejaVu Sans", sans-serif';

  /** The 2-D context, cleared, scaled to device pixels; w and h in CSS pixels. */
  function setup(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 300;
    const h = canvas.clientHeight || 150;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = FONT;
    return { ctx, w, h };
  }

  /** Round tick values between min and max, about `count` of them (steps of 1, 2 or 5 x 10^k). */
  function linearTicks(min, max, count = 5) {
    if (!(max > min)) return [min];
    const raw = (max - min) / Math.max(1, count);
    const mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
    const out = [];
    for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
    return out;
  }

  const TIME_STEPS_S = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800, 2592000];

  /** Tick times (Unix s) on local-clock boundaries, with a label format that fits the step. */
  function timeTicks(t0, t1, count = 6) {
    const span = Math.max(1, t1 - t0);
    const step = TIME_STEPS_S.find((s) => span / s <= count) || TIME_STEPS_S[TIME_STEPS_S.length - 1];
    const offset = -new Date(t0 * 1000).getTimezoneOffset() * 60; // local midnight alignment
    const first = Math.ceil((t0 + offset) / step) * step - offset;
    const ticks = [];
    for (let t = first; t <= t1; t += step) ticks.push(t);
    const label = step < 60
      ? (t) => new Date(t * 1000).toLocaleTimeString("en-GB")
      : step < 86400
        ? (t) => new Date(t * 1000).toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" })
        : (t) => new Date(t * 1000).toLocaleDateString("en-GB", { day: "2-digit", month: "short" });
    return { ticks, label };
  }

  const finite = (v) => v !== null && v !== undefined && Number.isFinite(v);

  /** A formatter with as many decimals as the tick step needs (0.25 -> 2, 5 -> 0). */
  function tickFormat(ticks) {
    const step = ticks.length > 1 ? Math.abs(ticks[1] - ticks[0]) : 1;
    const decimals = Math.min(4, Math.max(0, Math.ceil(-Math.log10(step) - 1e-9)));
    return (v) => (Math.abs(v) < step * 1e-6 ? 0 : v).toLocaleString("en-US", { minimumFractionDigits: decimals, maximumFractionDigits: decimals });
  }

  function extent(values, into = [Infinity, -Infinity]) {
    for (const v of values) if (finite(v)) { if (v < into[0]) into[0] = v; if (v > into[1]) into[1] = v; }
    return into;
  }

  function drawEmpty(canvas, ctx, w, h, message) {
    ctx.fillStyle = TEXT;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(message, w / 2, h / 2);
    canvas.dataset.drawn = "empty";
    canvas.dataset.points = "0";
  }

  /** The read-out box that follows the pointer over a chart (one per chart wrapper). */
  function tooltipOf(canvas) {
    const wrap = canvas.parentElement;
    let tip = wrap.querySelector(":scope > .tooltip");
    if (!tip) { tip = BMS.el("div", { class: "tooltip", hidden: true }); wrap.append(tip); }
    return tip;
  }

  function showTip(canvas, px, py, lines) {
    const tip = tooltipOf(canvas);
    tip.replaceChildren(...lines.map((l, i) => BMS.el("div", {}, i === 0 ? BMS.el("b", { text: l }) : l)));
    tip.hidden = false;
    const left = Math.min(px + 14, canvas.clientWidth - tip.offsetWidth - 4);
    tip.style.left = Math.max(0, left) + "px";
    tip.style.top = Math.max(0, py - tip.offsetHeight - 8) + "px";
  }

  function hideTip(canvas) {
    const tip = canvas.parentElement.querySelector(":scope > .tooltip");
    if (tip) tip.hidden = true;
  }

  /** Nearest index of sorted `xs` to x (binary search). */
  function nearest(xs, x) {
    let lo = 0, hi = xs.length - 1;
    while (hi - lo > 1) { const mid = (lo + hi) >> 1; if (xs[mid] < x) lo = mid; else hi = mid; }
    return Math.abs(xs[lo] - x) <= Math.abs(xs[hi] - x) ? lo : hi;
  }

  /**
   * A line chart.
   *
   * opts: {
   *   xKind: "time" (Unix s) | "linear",
   *   series:   [{label, color, x: [], y: [], width, dash, unit, digits}]   (nulls break a line)
   *   polygons: [{color, points: [[x, y], ...]}]                           (filled bands, drawn first)
   *   markers:  [{x, y, color, label}],
   *   hlines:   [{y, color, label}],
   *   xDomain, yDomain: [min, max] (else fitted to the data), yFloor: lowest allowed y min,
   *   yMinSpan: the least y range shown (a flat series is not blown up to fill the chart),
   *   yLabel, xLabel, xFormat(v), yFormat(v), empty: text when there is nothing to draw
   * }
   */
  function lineChart(canvas, opts) {
    const { ctx, w, h } = setup(canvas);
    const series = opts.series || [];
    const polygons = opts.polygons || [];
    const markers = opts.markers || [];
    const hlines = opts.hlines || [];
    const xs = [Infinity, -Infinity], ys = [Infinity, -Infinity];
    let points = 0;
    for (const s of series) {
      for (let i = 0; i < s.x.length; i++) if (finite(s.x[i]) && finite(s.y[i])) points++;
      extent(s.x, xs); extent(s.y, ys);
    }
    for (const p of polygons) for (const [x, y] of p.points) { extent([x], xs); extent([y], ys); }
    for (const m of markers) { extent([m.x], xs); extent([m.y], ys); }
    for (const l of hlines) extent([l.y], ys);
    const bandPoints = polygons.reduce((n, p) => n + p.points.length, 0);
    canvas.dataset.series = String(series.length);
    canvas.dataset.bandPoints = String(bandPoints);
    if (!points && !bandPoints && !markers.length) {
      drawEmpty(canvas, ctx, w, h, opts.empty || "No data");
      canvas._chart = null;
      return;
    }
    let [x0, x1] = opts.xDomain || xs;
    let [y0, y1] = opts.yDomain || ys;
    if (!(x1 > x0)) { x0 -= opts.xKind === "time" ? 60 : 1; x1 += opts.xKind === "time" ? 60 : 1; }
    if (!opts.yDomain) {
      const short = (opts.yMinSpan || 0) - (y1 - y0);
      if (short > 0) { y0 -= short / 2; y1 += short / 2; }
      const pad = (y1 - y0) * 0.08 || Math.max(1, Math.abs(y0) * 0.05);
      y0 -= pad; y1 += pad;
      if (opts.yFloor !== undefined) y0 = Math.max(opts.yFloor, y0);
    }
    const L = PAD.left, R = w - PAD.right, T = PAD.top, B = h - PAD.bottom;
    const sx = (x) => L + ((x - x0) / (x1 - x0)) * (R - L);
    const sy = (y) => B - ((y - y0) / (y1 - y0)) * (B - T);

    // Grid and axes.
    const yt = linearTicks(y0, y1, Math.max(3, Math.floor((B - T) / 30)));
    const yFormat = opts.yFormat || tickFormat(yt);
    ctx.strokeStyle = GRID; ctx.lineWidth = 1; ctx.fillStyle = TEXT;
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (const v of yt) {
      const y = Math.round(sy(v)) + 0.5;
      ctx.beginPath(); ctx.moveTo(L, y); ctx.lineTo(R, y); ctx.stroke();
      ctx.fillText(yFormat(v), L - 6, y);
    }
    let xt, xLabel;
    if (opts.xKind === "time") ({ ticks: xt, label: xLabel } = timeTicks(x0, x1, Math.max(2, Math.floor((R - L) / 90))));
    else { xt = linearTicks(x0, x1, Math.max(2, Math.floor((R - L) / 80))); xLabel = opts.xFormat || tickFormat(xt); }
    ctx.textAlign = "center"; ctx.textBaseline = "top";
    for (const v of xt) {
      const x = Math.round(sx(v)) + 0.5;
      ctx.strokeStyle = GRID; ctx.beginPath(); ctx.moveTo(x, T); ctx.lineTo(x, B); ctx.stroke();
      ctx.fillText(xLabel(v), x, B + 6);
    }
    ctx.strokeStyle = AXIS;
    ctx.beginPath(); ctx.moveTo(L + 0.5, T); ctx.lineTo(L + 0.5, B + 0.5); ctx.lineTo(R, B + 0.5); ctx.stroke();
    if (opts.yLabel) { ctx.textAlign = "left"; ctx.textBaseline = "top"; ctx.fillText(opts.yLabel, L + 6, T); }
    if (opts.xLabel) { ctx.textAlign = "right"; ctx.textBaseline = "bottom"; ctx.fillText(opts.xLabel, R, B - 3); }

    ctx.save();
    ctx.beginPath(); ctx.rect(L, T - 1, R - L, B - T + 2); ctx.clip();
    for (const p of polygons) {
      if (p.points.length < 3) continue;
      ctx.fillStyle = p.color;
      ctx.beginPath();
      p.points.forEach(([x, y], i) => (i ? ctx.lineTo(sx(x), sy(y)) : ctx.moveTo(sx(x), sy(y))));
      ctx.closePath(); ctx.fill();
    }
    for (const l of hlines) {
      ctx.strokeStyle = l.color || AXIS; ctx.setLineDash([4, 4]); ctx.lineWidth = 1;
      ctx.beginPath(); ctx.moveTo(L, sy(l.y)); ctx.lineTo(R, sy(l.y)); ctx.stroke();
      ctx.setLineDash([]);
      if (l.label) { ctx.fillStyle = l.color || TEXT; ctx.textAlign = "right"; ctx.textBaseline = "bottom"; ctx.fillText(l.label, R - 4, sy(l.y) - 2); }
    }
    for (const s of series) {
      ctx.strokeStyle = s.color; ctx.lineWidth = s.width || 1.6; ctx.lineJoin = "round";
      ctx.setLineDash(s.dash || []);
      ctx.beginPath();
      let pen = false;
      for (let i = 0; i < s.x.length; i++) {
        if (!finite(s.x[i]) || !finite(s.y[i])) { pen = false; continue; }
        const X = sx(s.x[i]), Y = sy(s.y[i]);
        if (pen) ctx.lineTo(X, Y); else { ctx.moveTo(X, Y); pen = true; }
      }
      ctx.stroke();
      ctx.setLineDash([]);
      if (s.dots) {
        ctx.fillStyle = s.color;
        for (let i = 0; i < s.x.length; i++) if (finite(s.x[i]) && finite(s.y[i])) { ctx.beginPath(); ctx.arc(sx(s.x[i]), sy(s.y[i]), 2.5, 0, 2 * Math.PI); ctx.fill(); }
      }
    }
    for (const m of markers) {
      ctx.fillStyle = m.color || "#111"; ctx.strokeStyle = "#fff"; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.arc(sx(m.x), sy(m.y), 4.5, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
      if (m.label) { ctx.fillStyle = TEXT; ctx.textAlign = "left"; ctx.textBaseline = "bottom"; ctx.fillText(m.label, sx(m.x) + 7, sy(m.y) - 4); }
    }
    ctx.restore();

    canvas.dataset.points = String(points);
    canvas.dataset.drawn = "1";
    canvas._chart = { opts, sx, sy, x0, x1, L, R, T, B, xLabel };
    if (!canvas._hover) {
      canvas._hover = true;
      canvas.addEventListener("mousemove", (ev) => lineHover(canvas, ev));
      canvas.addEventListener("mouseleave", () => hideTip(canvas));
    }
  }

  function lineHover(canvas, ev) {
    const c = canvas._chart;
    if (!c) return;
    const px = ev.offsetX, py = ev.offsetY;
    if (px < c.L || px > c.R) { hideTip(canvas); return; }
    const x = c.x0 + ((px - c.L) / (c.R - c.L)) * (c.x1 - c.x0);
    const lines = [];
    let at = null;
    for (const s of c.opts.series) {
      if (!s.x.length) continue;
      const i = nearest(s.x, x);
      if (!finite(s.y[i])) continue;
      at = at === null ? s.x[i] : at;
      lines.push(`${s.label}: ${(+s.y[i]).toFixed(s.digits ?? 1)}${s.unit ? " " + s.unit : ""}`);
    }
    if (!lines.length) { hideTip(canvas); return; }
    const head = c.opts.xKind === "time" ? new Date(at * 1000).toLocaleTimeString("en-GB") : `${c.opts.xLabel || "x"} ${c.xLabel(at)}`;
    showTip(canvas, px, py, [head, ...lines]);
  }

  /**
   * A histogram of `values` (nulls skipped; values outside [min, max] counted in the edge bins).
   *
   * opts: {values, min, max, bins, color | colorOf(binCentre), xFormat(v), unit, empty}
   */
  function histogram(canvas, opts) {
    const { ctx, w, h } = setup(canvas);
    const { min, max, bins } = opts;
    const counts = new Array(bins).fill(0);
    const width = (max - min) / bins;
    let n = 0;
    for (const v of opts.values) {
      if (!finite(v)) continue;
      const k = Math.min(bins - 1, Math.max(0, Math.floor((v - min) / width)));
      counts[k]++; n++;
    }
    canvas.dataset.bins = String(bins);
    canvas.dataset.count = String(n);
    if (!n) { drawEmpty(canvas, ctx, w, h, opts.empty || "No values yet"); canvas._hist = null; return; }
    const top = Math.max(...counts);
    const L = PAD.left, R = w - PAD.right, T = PAD.top, B = h - PAD.bottom;
    const sx = (x) => L + ((x - min) / (max - min)) * (R - L);
    const sy = (y) => B - (y / top) * (B - T);
    ctx.strokeStyle = GRID; ctx.fillStyle = TEXT; ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (const v of linearTicks(0, top, Math.max(2, Math.floor((B - T) / 34)))) {
      if (v !== Math.round(v)) continue;
      const y = Math.round(sy(v)) + 0.5;
      ctx.beginPath(); ctx.moveTo(L, y); ctx.lineTo(R, y); ctx.stroke();
      ctx.fillText(v.toLocaleString("en-US"), L - 6, y);
    }
    const xFormat = opts.xFormat || ((v) => String(+v.toFixed(1)));
    ctx.textAlign = "center"; ctx.textBaseline = "top";
    for (const v of linearTicks(min, max, Math.max(2, Math.floor((R - L) / 70)))) ctx.fillText(xFormat(v), sx(v), B + 6);
    for (let k = 0; k < bins; k++) {
      if (!counts[k]) continue;
      const a = sx(min + k * width), b = sx(min + (k + 1) * width);
      ctx.fillStyle = opts.colorOf ? opts.colorOf(min + (k + 0.5) * width) : opts.color || "#4f7cdb";
      ctx.fillRect(a + 1, sy(counts[k]), Math.max(1, b - a - 2), B - sy(counts[k]));
    }
    ctx.strokeStyle = AXIS;
    ctx.beginPath(); ctx.moveTo(L + 0.5, T); ctx.lineTo(L + 0.5, B + 0.5); ctx.lineTo(R, B + 0.5); ctx.stroke();
    canvas.dataset.drawn = "1";
    canvas._hist = { counts, min, width, L, R, unit: opts.unit || "", xFormat, n };
    if (!canvas._hover) {
      canvas._hover = true;
      canvas.addEventListener("mousemove", (ev) => {
        const c = canvas._hist;
        if (!c || ev.offsetX < c.L || ev.offsetX > c.R) { hideTip(canvas); return; }
        const k = Math.min(c.counts.length - 1, Math.floor(((ev.offsetX - c.L) / (c.R - c.L)) * c.counts.length));
        const lo = c.min + k * c.width;
        showTip(canvas, ev.offsetX, ev.offsetY, [
          `${c.xFormat(lo)}–${c.xFormat(lo + c.width)}${c.unit ? " " + c.unit : ""}`,
          `${c.counts[k].toLocaleString("en-US")} batteries (${((100 * c.counts[k]) / c.n).toFixed(1)} %)`,
        ]);
      });
      canvas.addEventListener("mouseleave", () => hideTip(canvas));
    }
  }

  /** A colour between red (0), amber (0.5) and green (1), for charge and health. */
  function ramp(t) {
    if (!finite(t)) return "#9aa3b2";
    t = Math.min(1, Math.max(0, t));
    const stops = [[210, 58, 58], [230, 160, 40], [47, 158, 91]];
    const [a, b, f] = t < 0.5 ? [stops[0], stops[1], t / 0.5] : [stops[1], stops[2], (t - 0.5) / 0.5];
    const c = a.map((v, i) => Math.round(v + (b[i] - v) * f));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }

  BMS.charts = { lineChart, histogram, linearTicks, timeTicks, ramp };
})(window.BMS);
