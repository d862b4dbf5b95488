/* A map of the service area on one canvas, without tiles: an equirectangular projection
 * fitted to the data's bounds (at city scale the distortion is negligible), with layers for
 * zones, technicians' routes, vehicles (10,000+ points, drawn in one path per colour),
 * depots and a marker with a radius. Wheel zooms, drag pans, double-click fits again;
 * hovering a point shows what `describe` says of it, clicking it calls `onPick`.
 *
 * After each draw the canvas says what it drew: data-points (vehicles), data-routes,
 * data-stops, data-zones, data-depots.
 */
"use strict";

(function (BMS) {
  const M_PER_DEG_LAT = 111320;
  const finite = Number.isFinite;

  class GeoMap {
    /**
     * @param canvas    the <canvas class="map"> (its parent is positioned, for the tooltip)
     * @param options   {onPick(i): a vehicle clicked, onClick(lat, lon): elsewhere clicked,
     *                   describe(kind, i) -> [lines], pointSize, padding}
     */
    constructor(canvas, { onPick, onClick, describe, pointSize, padding = 24, emptyText = "No positions yet" } = {}) {
      this.canvas = canvas;
      this.emptyText = emptyText;
      this.onPick = onPick || null;
      this.onClick = onClick || null;
      this.describe = describe || null;
      this.pointSize = pointSize || null;
      this.padding = padding;
      this.lat = []; this.lon = []; this.colorOf = () => "#4f7cdb"; this.labelOf = null;
      this.zones = []; this.routes = []; this.depots = []; this.marker = null;
      this.view = null; // {lat0, lon0, scale (px per degree of latitude)}
      this.screen = new Float32Array(0); // projected x, y of every point, for hover and pick
      this.drag = null;
      this.frame = 0;
      this.tip = BMS.el("div", { class: "tooltip", hidden: true });
      canvas.parentElement.append(this.tip);
      canvas.addEventListener("wheel", (ev) => this.onWheel(ev), { passive: false });
      canvas.addEventListener("mousedown", (ev) => { this.drag = { x: ev.offsetX, y: ev.offsetY, moved: 0 }; });
      canvas.addEventListener("mousemove", (ev) => this.onMove(ev));
      window.addEventListener("mouseup", (ev) => this.onUp(ev));
      canvas.addEventListener("mouseleave", () => { this.tip.hidden = true; });
      canvas.addEventListener("dblclick", () => { this.fit(); this.draw(); });
      this.resizer = new ResizeObserver(() => this.draw());
      this.resizer.observe(canvas);
    }

    destroy() { this.resizer.disconnect(); cancelAnimationFrame(this.frame); }

    // ------------------------------------------------------------ layers
    /**
     * Replace some layers and draw once:
     *   lat, lon   vehicles as columns; colorOf(i) -> CSS colour (a few distinct values);
     *              labelOf(i) -> a short label, drawn inside big points (pointSize >= 12)
     *   zones      [{lat0, lat1, lon0, lon1, fill}]
     *   routes     [{color, path: [[lat, lon]...], stops: [{lat, lon, label}]}]
     *   depots     [{id, lat, lon}]
     *   marker     {lat, lon, radius_m} (a searched point), or null
     * The view is fitted to the data the first time, when the marker moves, and when the
     * fleet has moved out of it; otherwise it stays where the user zoomed and panned.
     */
    update(layers) {
      const refit = !this.view || "marker" in layers;
      for (const key of ["lat", "lon", "colorOf", "labelOf", "zones", "routes", "depots", "marker"]) {
        if (key in layers && layers[key] !== undefined) this[key] = layers[key];
      }
      if (refit || this.outside() > 0.02) this.fit();
      this.draw();
    }

    // ------------------------------------------------------------ projection
    bounds() {
      const lats = [], lons = [];
      const n = this.lat.length;
      const pick = [];
      for (let i = 0; i < n; i++) if (finite(this.lat[i]) && finite(this.lon[i])) pick.push(i);
      if (pick.length) {
        // A few vehicles with a wild GPS fix must not shrink the city to a dot: with many
        // points, fit the 0.5-99.5 percentiles.
        const la = pick.map((i) => this.lat[i]).sort((a, b) => a - b);
        const lo = pick.map((i) => this.lon[i]).sort((a, b) => a - b);
        const cut = pick.length > 200 ? Math.floor(pick.length * 0.005) : 0;
        lats.push(la[cut], la[la.length - 1 - cut]); lons.push(lo[cut], lo[lo.length - 1 - cut]);
      }
      for (const d of this.depots) { lats.push(d.lat); lons.push(d.lon); }
      for (const r of this.routes) for (const [a, b] of r.path) { lats.push(a); lons.push(b); }
      if (this.marker) {
        const dLat = (this.marker.radius_m || 0) / M_PER_DEG_LAT;
        const dLon = dLat / Math.cos((this.marker.lat * Math.PI) / 180);
        lats.push(this.marker.lat - dLat, this.marker.lat + dLat); lons.push(this.marker.lon - dLon, this.marker.lon + dLon);
      }
      const ok = (v) => v.filter(finite);
      const la = ok(lats), lo = ok(lons);
      if (!la.length) return null;
      return { latMin: Math.min(...la), latMax: Math.max(...la), lonMin: Math.min(...lo), lonMax: Math.max(...lo) };
    }

    /** Share of the vehicles outside the current view (a fleet that moved: fit again). */
    outside() {
      const n = this.lat.length;
      if (!this.view) return 1;
      if (!n) return 0;
      const w = this.canvas.clientWidth, h = this.canvas.clientHeight;
      let out = 0;
      for (let i = 0; i < n; i += Math.max(1, Math.floor(n / 500))) {
        const [x, y] = this.project(this.lat[i], this.lon[i]);
        if (x < 0 || y < 0 || x > w || y > h) out++;
      }
      return out / Math.min(n, 500);
    }

    fit() {
      const b = this.bounds();
      if (!b) { this.view = null; return; }
      const w = this.canvas.clientWidth || 600, h = this.canvas.clientHeight || 400;
      const lat0 = (b.latMin + b.latMax) / 2, lon0 = (b.lonMin + b.lonMax) / 2;
      const kx = Math.cos((lat0 * Math.PI) / 180);
      const spanLat = Math.max(b.latMax - b.latMin, 0.002), spanLon = Math.max((b.lonMax - b.lonMin) * kx, 0.002);
      const scale = Math.min((w - 2 * this.padding) / spanLon, (h - 2 * this.padding) / spanLat);
      this.view = { lat0, lon0, kx, scale };
    }

    project(lat, lon) {
      const v = this.view, w = this.canvas.clientWidth, h = this.canvas.clientHeight;
      return [w / 2 + (lon - v.lon0) * v.kx * v.scale, h / 2 - (lat - v.lat0) * v.scale];
    }

    unproject(x, y) {
      const v = this.view, w = this.canvas.clientWidth, h = this.canvas.clientHeight;
      return [v.lat0 - (y - h / 2) / v.scale, v.lon0 + (x - w / 2) / (v.kx * v.scale)];
    }

    // ------------------------------------------------------------ drawing
    invalidate() {
      cancelAnimationFrame(this.frame);
      this.frame = requestAnimationFrame(() => this.draw());
    }

    draw() {
      const canvas = this.canvas;
      const dpr = window.devicePixelRatio || 1;
      const w = canvas.clientWidth, h = canvas.clientHeight;
      if (!w || !h) return;
      if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
        canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
      }
      const ctx = canvas.getContext("2d");
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.fillStyle = "#eef2f6";
      ctx.fillRect(0, 0, w, h);
      if (!this.view) this.fit();
      if (!this.view) {
        ctx.fillStyle = "#5b6577"; ctx.font = '13px system-ui, "DejaVu Sans", sans-serif';
        ctx.textAlign = "center"; ctx.fillText(this.emptyText, w / 2, h / 2);
        Object.assign(canvas.dataset, { points: "0", routes: "0", stops: "0", zones: "0", depots: "0" });
        return;
      }
      this.drawZones(ctx);
      this.drawMarker(ctx);
      this.drawRoutes(ctx);
      const drawn = this.drawPoints(ctx, w, h);
      const stops = this.drawStops(ctx);
      this.drawDepots(ctx);
      this.drawScale(ctx, w, h);
      Object.assign(canvas.dataset, {
        points: String(drawn), routes: String(this.routes.length), stops: String(stops),
        zones: String(this.zones.length), depots: String(this.depots.length),
      });
    }

    drawZones(ctx) {
      ctx.lineWidth = 1;
      for (const z of this.zones) {
        const [x0, y0] = this.project(z.lat1, z.lon0), [x1, y1] = this.project(z.lat0, z.lon1);
        ctx.fillStyle = z.fill || "rgba(79, 124, 219, .06)";
        ctx.fillRect(x0, y0, x1 - x0, y1 - y0);
        ctx.strokeStyle = "rgba(90, 105, 130, .16)";
        ctx.strokeRect(Math.round(x0) + 0.5, Math.round(y0) + 0.5, Math.round(x1 - x0), Math.round(y1 - y0));
      }
    }

    drawPoints(ctx, w, h) {
      const n = this.lat.length;
      this.screen = new Float32Array(2 * n).fill(NaN);
      const size = this.pointSize || (n > 3000 ? 3 : n > 300 ? 4 : 7);
      const half = size / 2;
      const byColor = new Map();
      let drawn = 0;
      for (let i = 0; i < n; i++) {
        const la = this.lat[i], lo = this.lon[i];
        if (!finite(la) || !finite(lo)) continue;
        const [x, y] = this.project(la, lo);
        this.screen[2 * i] = x; this.screen[2 * i + 1] = y;
        drawn++;
        if (x < -size || y < -size || x > w + size || y > h + size) continue;
        const c = this.colorOf(i);
        let list = byColor.get(c);
        if (!list) byColor.set(c, (list = []));
        list.push(x, y);
      }
      // One path per colour: 10,000 points are a handful of fills.
      for (const [color, xy] of byColor) {
        ctx.fillStyle = color;
        ctx.beginPath();
        if (size >= 6) {
          for (let k = 0; k < xy.length; k += 2) { ctx.moveTo(xy[k] + half, xy[k + 1]); ctx.arc(xy[k], xy[k + 1], half, 0, 2 * Math.PI); }
          ctx.fill();
          ctx.strokeStyle = "#fff"; ctx.lineWidth = 1.5; ctx.stroke();
        } else {
          for (let k = 0; k < xy.length; k += 2) ctx.rect(xy[k] - half, xy[k + 1] - half, size, size);
          ctx.fill();
        }
      }
      if (this.labelOf && size >= 12) {
        ctx.fillStyle = "#fff"; ctx.font = 'bold 10px system-ui, "DejaVu Sans", sans-serif';
        ctx.textAlign = "center"; ctx.textBaseline = "middle";
        for (let i = 0; i < n; i++) if (finite(this.screen[2 * i])) ctx.fillText(this.labelOf(i), this.screen[2 * i], this.screen[2 * i + 1] + 0.5);
      }
      return drawn;
    }

    drawRoutes(ctx) {
      for (const r of this.routes) {
        const pts = r.path.filter(([a, b]) => finite(a) && finite(b)).map(([a, b]) => this.project(a, b));
        if (pts.length < 2) continue;
        for (const [width, color] of [[5, "rgba(255,255,255,.9)"], [2.5, r.color]]) {
          ctx.strokeStyle = color; ctx.lineWidth = width; ctx.lineJoin = "round"; ctx.lineCap = "round";
          ctx.beginPath();
          pts.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
          ctx.stroke();
        }
      }
    }

    drawStops(ctx) {
      let n = 0;
      ctx.font = 'bold 10px system-ui, "DejaVu Sans", sans-serif';
      ctx.textAlign = "center"; ctx.textBaseline = "middle";
      for (const r of this.routes) {
        for (const s of r.stops || []) {
          if (!finite(s.lat) || !finite(s.lon)) continue;
          const [x, y] = this.project(s.lat, s.lon);
          const big = r.stops.length <= 40;
          ctx.fillStyle = s.color || r.color; ctx.strokeStyle = "#fff"; ctx.lineWidth = 1.5;
          ctx.beginPath(); ctx.arc(x, y, big ? 8 : 4, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
          if (big && s.label) { ctx.fillStyle = "#fff"; ctx.fillText(s.label, x, y + 0.5); }
          n++;
        }
      }
      return n;
    }

    drawDepots(ctx) {
      ctx.font = 'bold 11px system-ui, "DejaVu Sans", sans-serif';
      for (const d of this.depots) {
        if (!finite(d.lat) || !finite(d.lon)) continue;
        const [x, y] = this.project(d.lat, d.lon);
        ctx.fillStyle = "#131a24"; ctx.strokeStyle = "#fff"; ctx.lineWidth = 2;
        ctx.beginPath(); ctx.rect(x - 7, y - 7, 14, 14); ctx.fill(); ctx.stroke();
        ctx.fillStyle = "#fff"; ctx.textAlign = "center"; ctx.textBaseline = "middle"; ctx.fillText("D", x, y + 0.5);
        ctx.fillStyle = "#131a24"; ctx.textAlign = "left"; ctx.fillText(d.id, x + 11, y);
      }
    }

    drawMarker(ctx) {
      const m = this.marker;
      if (!m) return;
      const [x, y] = this.project(m.lat, m.lon);
      if (m.radius_m) {
        const r = (m.radius_m / M_PER_DEG_LAT) * this.view.scale;
        ctx.fillStyle = "rgba(37, 99, 235, .07)"; ctx.strokeStyle = "rgba(37, 99, 235, .5)"; ctx.lineWidth = 1.5;
        ctx.setLineDash([5, 4]);
        ctx.beginPath(); ctx.arc(x, y, r, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
        ctx.setLineDash([]);
      }
      ctx.fillStyle = "#2563eb"; ctx.strokeStyle = "#fff"; ctx.lineWidth = 3;
      ctx.beginPath(); ctx.arc(x, y, 7, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
    }

    drawScale(ctx, w, h) {
      const mPerPx = M_PER_DEG_LAT / this.view.scale;
      const target = 110 * mPerPx;
      const mag = 10 ** Math.floor(Math.log10(target));
      const len = [5, 2, 1].map((k) => k * mag).find((d) => d <= target) || mag;
      const px = len / mPerPx;
      const x = 14, y = h - 16;
      ctx.strokeStyle = "#394455"; ctx.lineWidth = 1.5;
      ctx.beginPath(); ctx.moveTo(x, y - 5); ctx.lineTo(x, y); ctx.lineTo(x + px, y); ctx.lineTo(x + px, y - 5); ctx.stroke();
      ctx.fillStyle = "#394455"; ctx.font = '11px system-ui, "DejaVu Sans", sans-serif';
      ctx.textAlign = "left"; ctx.textBaseline = "bottom";
      ctx.fillText(len >= 1000 ? `${len / 1000} km` : `${len} m`, x + px + 6, y + 1);
    }

    // ------------------------------------------------------------ interaction
    nearestPoint(x, y, within = 9) {
      let best = -1, bestD = within * within;
      const s = this.screen;
      for (let i = 0; i < s.length / 2; i++) {
        const dx = s[2 * i] - x, dy = s[2 * i + 1] - y;
        const d = dx * dx + dy * dy;
        if (d < bestD) { bestD = d; best = i; }
      }
      return best;
    }

    nearestStop(x, y, within = 10) {
      for (const r of this.routes) {
        for (const s of r.stops || []) {
          const [sx, sy] = this.project(s.lat, s.lon);
          if ((sx - x) ** 2 + (sy - y) ** 2 <= within * within) return s;
        }
      }
      return null;
    }

    onMove(ev) {
      if (this.drag && (ev.buttons & 1)) {
        const dx = ev.offsetX - this.drag.x, dy = ev.offsetY - this.drag.y;
        this.drag.moved += Math.abs(dx) + Math.abs(dy);
        this.drag.x = ev.offsetX; this.drag.y = ev.offsetY;
        if (this.view) {
          this.view.lat0 += dy / this.view.scale;
          this.view.lon0 -= dx / (this.view.kx * this.view.scale);
          this.invalidate();
        }
        this.tip.hidden = true;
        return;
      }
      if (!this.view || !this.describe) return;
      const stop = this.nearestStop(ev.offsetX, ev.offsetY);
      const i = stop ? -1 : this.nearestPoint(ev.offsetX, ev.offsetY);
      const lines = stop ? this.describe("stop", stop) : i >= 0 ? this.describe("point", i) : null;
      if (!lines || !lines.length) { this.tip.hidden = true; this.canvas.style.cursor = "crosshair"; return; }
      this.canvas.style.cursor = this.onPick && i >= 0 ? "pointer" : "crosshair";
      this.tip.replaceChildren(...lines.map((l, k) => BMS.el("div", {}, k === 0 ? BMS.el("b", { text: l }) : l)));
      this.tip.hidden = false;
      const left = Math.min(ev.offsetX + 14, this.canvas.clientWidth - this.tip.offsetWidth - 4);
      this.tip.style.left = Math.max(0, left) + "px";
      this.tip.style.top = Math.max(0, ev.offsetY - this.tip.offsetHeight - 10) + "px";
    }

    onUp(ev) {
      const drag = this.drag;
      this.drag = null;
      if (!drag || drag.moved > 4 || ev.target !== this.canvas || !this.view) return;
      const i = this.nearestPoint(ev.offsetX, ev.offsetY);
      if (i >= 0 && this.onPick) this.onPick(i);
      else if (this.onClick) this.onClick(...this.unproject(ev.offsetX, ev.offsetY));
    }

    onWheel(ev) {
      if (!this.view) return;
      ev.preventDefault();
      const [lat, lon] = this.unproject(ev.offsetX, ev.offsetY);
      const factor = Math.exp(-ev.deltaY * 0.0015);
      this.view.scale = Math.min(1e7, Math.max(10, this.view.scale * factor));
      // Keep the place under the pointer where it is.
      const [x, y] = this.project(lat, lon);
      this.view.lat0 += (y - ev.offsetY) / this.view.scale * -1;
      this.view.lon0 += (x - ev.offsetX) / (this.view.kx * this.view.scale);
      this.invalidate();
    }
  }

  BMS.GeoMap = GeoMap;
})(window.BMS);
