/* The fleet manager's dashboard (#fleet): the live map of the service area, the alerts,
 * health-score and SOH distributions, the plan and the job queue, and watch lists.
 *
 * The map is one columnar request (GET /api/v1/fleet/map: one array per field), drawn on a
 * canvas; it is read every 5 s, the summary and lists every 5 s, the planner every 10 s,
 * and the alerts arrive as server-sent events.
 */
"use strict";

(function (BMS) {
  const { el, api, fmt, chip, table, card, query, charts } = BMS;
  const ROUTE_COLORS = ["#2563eb", "#c026d3", "#0d9488", "#ea580c", "#7c3aed", "#dc2626", "#0891b2", "#65a30d", "#db2777", "#4d7c0f"];
  const BAND_COLORS = { good: "#2f9e5b", fair: "#c7a21a", poor: "#e07b24", end_of_life: "#d23a3a", unknown: "#9aa3b2" };
  const BANDS = ["good", "fair", "poor", "end_of_life", "unknown"];
  const KM_PER_DEG_LAT = 111.32; // twins/zones.py

  /** Colour buckets of 10 % (a few fills for 10,000 points, and a legend that reads). */
  const bucketColor = (value, scale) => (BMS.known(value) ? charts.ramp(Math.round((value / scale) * 10) / 10) : "#9aa3b2");
  const sohColor = (soh) => (soh >= 90 ? BAND_COLORS.good : soh >= 80 ? BAND_COLORS.fair : soh >= 70 ? BAND_COLORS.poor : BAND_COLORS.end_of_life);

  const batteryLink = (id) => el("a", { href: "#battery/" + encodeURIComponent(id), class: "mono", text: id });

  /**
   * Zones are squares of `cell_km` named z<row>_<col> (twins/zones.py), with
   * row = floor(lat * 111.32 / cell_km). The API does not state cell_km, but every battery
   * whose zone and latitude the page knows bounds it; the roundest number inside all the
   * bounds is the grid's cell size (1 km unless configured otherwise).
   */
  function inferCellKm(samples) {
    let lo = 0, hi = Infinity;
    for (const { lat, row } of samples) {
      if (!BMS.known(lat) || row === 0 || row === -1) continue;
      const a = (lat * KM_PER_DEG_LAT) / (row + 1), b = (lat * KM_PER_DEG_LAT) / row;
      lo = Math.max(lo, Math.min(a, b)); hi = Math.min(hi, Math.max(a, b));
    }
    if (!(hi >= lo) || !Number.isFinite(hi)) return null;
    for (let e = Math.floor(Math.log10(hi)); e > Math.floor(Math.log10(hi)) - 8; e--) {
      const step = 10 ** e;
      const c = Math.ceil(lo / step - 1e-9) * step;
      if (c <= hi * (1 + 1e-12)) return +c.toPrecision(12);
    }
    return (lo + hi) / 2;
  }

  function zoneCell(cellKm, row, col) {
    const lat0 = (row * cellKm) / KM_PER_DEG_LAT, lat1 = ((row + 1) * cellKm) / KM_PER_DEG_LAT;
    const centre = ((row + 0.5) * cellKm) / KM_PER_DEG_LAT;
    const kmPerDegLon = KM_PER_DEG_LAT * Math.max(Math.cos((centre * Math.PI) / 180), 1e-6);
    return { lat0, lat1, lon0: (col * cellKm) / kmPerDegLon, lon1: ((col + 1) * cellKm) / kmPerDegLon };
  }

  /** The zone cells that hold vehicles, shaded by how many. */
  function zonesOf(cellKm, lat, lon) {
    const counts = new Map();
    for (let i = 0; i < lat.length; i++) {
      if (!BMS.known(lat[i]) || !BMS.known(lon[i])) continue;
      const row = Math.floor((lat[i] * KM_PER_DEG_LAT) / cellKm);
      const centre = ((row + 0.5) * cellKm) / KM_PER_DEG_LAT;
      const col = Math.floor((lon[i] * KM_PER_DEG_LAT * Math.max(Math.cos((centre * Math.PI) / 180), 1e-6)) / cellKm);
      const key = row + "_" + col;
      counts.set(key, (counts.get(key) || 0) + 1);
    }
    const top = Math.max(1, ...counts.values());
    return [...counts].map(([key, n]) => {
      const [row, col] = key.split("_").map(Number);
      return { ...zoneCell(cellKm, row, col), label: `z${key}`, count: n, fill: `rgba(37, 99, 235, ${(0.025 + 0.11 * (n / top)).toFixed(3)})` };
    });
  }

  function kpi(label, value, unit, cls, id) {
    return el("div", { class: "kpi " + (cls || ""), dataset: id ? { kpi: id } : null }, el("div", { class: "label", text: label }),
      el("div", { class: "value" }, String(value), unit && value !== "–" ? el("small", { text: unit }) : null));
  }

  function mount(main) {
    const state = { colorBy: "soc", map: null, meanSoh: null, layers: { zones: true, routes: true, depots: true }, cellKm: null, topRows: [], plan: null, depots: [] };

    // ------------------------------------------------------------ layout
    const kpis = el("div", { class: "kpis", id: "kpis" });
    const canvas = el("canvas", { class: "map", id: "fleet-map", "aria-label": "Map of the fleet" });
    const seg = el("div", { class: "seg", role: "group", "aria-label": "Colour vehicles by" },
      [["soc", "Charge"], ["health", "Health"]].map(([key, label]) => el("button", {
        type: "button", dataset: { color: key }, class: key === state.colorBy ? "on" : null, text: label,
        onclick: () => { state.colorBy = key; for (const b of seg.children) b.classList.toggle("on", b.dataset.color === key); drawMap(); },
      })));
    const layerBoxes = Object.keys(state.layers).map((name) => el("label", { class: "check" },
      el("input", { type: "checkbox", checked: true, dataset: { layer: name }, onchange: (ev) => { state.layers[name] = ev.target.checked; drawMap(); } }),
      name[0].toUpperCase() + name.slice(1)));
    const legend = el("div", { class: "legend", id: "map-legend" });
    const mapInfo = el("span", { id: "map-count" });
    const mapAge = el("span", { id: "map-asof" });
    const mapCard = card("Service area", {
      sub: el("span", { class: "sub", text: "vehicles, zones, depots and technicians’ routes" }),
      tools: [seg, ...layerBoxes, el("button", { class: "btn small", type: "button", text: "Fit", onclick: () => { geo.fit(); geo.draw(); } })],
      bodyClass: "flush",
      body: el("div", { class: "map-wrap" }, canvas),
      foot: [legend, el("span", { class: "spacer" }), mapInfo, mapAge],
    });
    const alerts = new BMS.AlertsPanel();

    const histHealth = el("canvas", { class: "chart", id: "hist-health" });
    const histSoh = el("canvas", { class: "chart", id: "hist-soh" });
    const bands = el("div", { class: "bars", id: "bands" });

    const planBox = el("div", { id: "plan" });
    const planSub = el("span", { class: "sub", id: "plan-sub" });
    const replan = el("button", { class: "btn small", type: "button", id: "replan", text: "Re-plan now", onclick: () => replanNow() });
    const queue = el("table", { class: "data", id: "queue" });
    const queueSub = el("span", { class: "sub", id: "queue-sub" });

    const lists = {
      low: el("table", { class: "data", id: "low" }),
      hot: el("table", { class: "data", id: "hot" }),
      prio: el("table", { class: "data", id: "prio" }),
      health: el("table", { class: "data", id: "health" }),
      anom: el("table", { class: "data", id: "anom" }),
    };

    const updated = el("span", { class: "sub", id: "ts" });
    main.append(
      el("div", { class: "page-head" }, el("h1", { text: "Fleet" }), updated),
      kpis,
      el("div", { class: "grid g-map" }, mapCard, alerts.node),
      el("div", { class: "grid g-3" },
        card("Health score", { sub: el("span", { class: "sub", text: "XGBoost, 0–100" }), body: el("div", { class: "chart-wrap" }, histHealth) }),
        card("State of health", { sub: el("span", { class: "sub", text: "% of rated capacity" }), body: el("div", { class: "chart-wrap" }, histSoh) }),
        card("Health bands", { sub: el("span", { class: "sub", text: "by state of health" }), body: bands })),
      el("div", { class: "grid g-2" },
        card("Plan", { sub: planSub, tools: replan, body: planBox }),
        card("Job queue", { sub: queueSub, bodyClass: "flush scroll", body: queue })),
      el("div", { class: "grid g-3" },
        card("Lowest charge", { bodyClass: "flush", body: lists.low }),
        card("Hottest packs", { bodyClass: "flush", body: lists.hot }),
        card("Highest swap priority", { sub: el("span", { class: "sub", text: "expected lost rides, 6 h" }), bodyClass: "flush", body: lists.prio })),
      el("div", { class: "grid g-2" },
        card("Lowest health score", { bodyClass: "flush", body: lists.health }),
        card("Newest anomaly events", { bodyClass: "flush scroll", body: lists.anom })),
    );

    const geo = new BMS.GeoMap(canvas, {
      onPick: (i) => { location.hash = "#battery/" + encodeURIComponent(state.map.battery_id[i]); },
      describe: (kind, x) => {
        if (kind === "stop") return [`Stop ${x.label} · ${x.technician}`, `${fmt.label(x.kind)} · ${x.battery_id}`, `ETA ${fmt.hm(x.eta_s)}`];
        const m = state.map;
        return [
          m.battery_id[x],
          `vehicle ${m.vehicle_id[x] ?? "–"}${m.charging[x] ? " · charging" : ""}`,
          `SoC ${fmt.pct(m.soc_pct[x])} · ${fmt.num(m.temp_c[x])} °C`,
          `health ${fmt.num(m.health_score[x], 0)} · SOH ${fmt.pct(m.soh_pct[x], 1)} · ${fmt.label(m.health_band[x])}`,
          ...(m.anomaly_flags[x] && m.anomaly_flags[x].length ? [`anomaly: ${m.anomaly_flags[x].join(", ")}`] : []),
        ];
      },
    });

    // ------------------------------------------------------------ map
    function colorOf() {
      const m = state.map;
      if (state.colorBy === "soc") return (i) => bucketColor(m.soc_pct[i], 100);
      return (i) => (BMS.known(m.health_score[i]) ? bucketColor(m.health_score[i], 100) : BAND_COLORS[m.health_band[i]] || BAND_COLORS.unknown);
    }

    function drawLegend() {
      const ramp = el("span", { class: "ramp" });
      ramp.style.background = `linear-gradient(90deg, ${charts.ramp(0)}, ${charts.ramp(0.5)}, ${charts.ramp(1)})`;
      const sw = (color) => { const s = el("span", { class: "sw" }); s.style.background = color; return s; };
      legend.replaceChildren(
        el("span", {}, state.colorBy === "soc" ? "Charge 0 %" : "Health 0", ramp, state.colorBy === "soc" ? "100 %" : "100"),
        el("span", {}, sw("#9aa3b2"), "no data"),
        el("span", {}, sw("#131a24"), "depot"));
    }

    function drawMap() {
      if (!state.map) return;
      geo.update({
        lat: state.map.lat, lon: state.map.lon, colorOf: colorOf(),
        zones: state.layers.zones && state.cellKm ? zonesOf(state.cellKm, state.map.lat, state.map.lon) : [],
        depots: state.layers.depots ? state.depots : [],
        routes: state.layers.routes ? routesOf(state.plan) : [],
      });
      drawLegend();
    }

    function routesOf(plan) {
      if (!plan) return [];
      const depot = new Map(state.depots.map((d) => [d.id, d]));
      return plan.routes.map((r, k) => {
        const color = ROUTE_COLORS[k % ROUTE_COLORS.length];
        const home = depot.get(r.depot_id);
        const stops = r.stops.map((s, i) => ({ ...s, label: String(i + 1), technician: r.technician_id }));
        const path = [...(home ? [[home.lat, home.lon]] : []), ...stops.map((s) => [s.lat, s.lon]), ...(home ? [[home.lat, home.lon]] : [])];
        return { color, label: r.technician_id, path, stops };
      });
    }

    async function loadMap() {
      const m = await api("api/v1/fleet/map");
      state.map = m;
      updateCellKm();
      drawMap();
      mapInfo.textContent = `${fmt.int(m.count)} batteries · ${fmt.int(canvas.dataset.points)} on the map`;
      mapAge.textContent = `data as of ${fmt.time(m.as_of_s)} (${fmt.duration(m.staleness_s)} old)`;
      charts.histogram(histHealth, { values: m.health_score, min: 0, max: 100, bins: 20, colorOf: (v) => charts.ramp(v / 100), xFormat: (v) => String(v), empty: "No health scores yet (models not served?)" });
      charts.histogram(histSoh, { values: m.soh_pct, min: 50, max: 110, bins: 30, colorOf: sohColor, unit: "%", xFormat: (v) => `${v} %`, empty: "No SOH yet" });
      const soh = m.soh_pct.filter(BMS.known);
      state.meanSoh = soh.length ? soh.reduce((a, b) => a + b, 0) / soh.length : null;
      const sohTile = kpis.querySelector("[data-kpi='soh']");
      if (sohTile) sohTile.replaceWith(kpi("Mean SOH", fmt.num(state.meanSoh), "%", null, "soh"));
      const counts = Object.fromEntries(BANDS.map((b) => [b, 0]));
      for (const b of m.health_band) counts[b in counts ? b : "unknown"]++;
      const total = Math.max(1, m.count);
      bands.replaceChildren(...BANDS.map((b) => {
        const fill = el("div", { class: "bar-fill" });
        fill.style.width = `${(100 * counts[b]) / total}%`;
        fill.style.background = BAND_COLORS[b];
        return el("div", { class: "bar-row", dataset: { band: b, count: counts[b] } },
          el("span", { text: fmt.label(b) }), el("div", { class: "bar-track" }, fill),
          el("span", { class: "num", text: `${fmt.int(counts[b])}` }));
      }));
    }

    function updateCellKm() {
      if (!state.map || !state.topRows.length) return;
      const index = new Map(state.map.battery_id.map((id, i) => [id, i]));
      const samples = [];
      for (const r of state.topRows) {
        const i = index.get(r.battery_id);
        const m = /^z(-?\d+)_(-?\d+)$/.exec(r.zone || "");
        if (i !== undefined && m) samples.push({ lat: state.map.lat[i], row: Number(m[1]) });
      }
      state.cellKm = inferCellKm(samples) ?? state.cellKm;
    }

    // ------------------------------------------------------------ summary and lists
    async function loadSummary() {
      const s = await api("api/v1/fleet/summary");
      const o = s.overall || {};
      const mean = (f) => (o[f] ? o[f].mean : null);
      kpis.replaceChildren(
        kpi("Batteries", fmt.int(s.batteries)),
        kpi("Charging", fmt.int(s.charging)),
        kpi("SoC below 20 %", fmt.int(s.low_soc_lt_20pct), null, s.low_soc_lt_20pct ? "warn" : ""),
        kpi("Hotter than 45 °C", fmt.int(s.hot_gt_45c), null, s.hot_gt_45c ? "bad" : ""),
        kpi("Mean charge", fmt.num(mean("soc_pct")), "%"),
        kpi("Mean temperature", fmt.num(mean("temp_c")), "°C"),
        // The map's SOH (the model's where scored, else the capacity estimate), as the histogram.
        kpi("Mean SOH", fmt.num(state.meanSoh ?? mean("soh_pct_est")), "%", null, "soh"),
        kpi("Shards", fmt.int(s.shards)));
      updated.textContent = `updated ${fmt.time(s.generated_at_s)}`;
      const top = async (by, order) => (await api(`api/v1/fleet/top${query({ by, order, n: 8 })}`)).rows;
      const [low, hot, prio, health] = await Promise.all([top("soc_pct", "asc"), top("temp_c", "desc"), top("priority", "desc"), top("health_score", "asc")]);
      state.topRows = [...low, ...hot, ...prio, ...health];
      const hadZones = state.cellKm !== null;
      updateCellKm();
      if (!hadZones && state.cellKm !== null) drawMap();
      const cols = (valueLabel, digits, extra) => [
        { label: "battery", value: (r) => batteryLink(r.battery_id) },
        { label: "vehicle", value: (r) => r.vehicle_id },
        { label: "zone", value: (r) => r.zone },
        { label: valueLabel, num: true, value: (r) => fmt.num(r.value, digits) },
        extra,
      ];
      const band = { label: "band", value: (r) => chip(fmt.label(r.health_band), r.health_band) };
      table(lists.low, cols("SoC %", 1, band), low);
      table(lists.hot, cols("temp °C", 1, band), hot);
      table(lists.prio, cols("priority", 1, { label: "SoC %", num: true, value: (r) => fmt.num(r.soc_pct) }), prio);
      table(lists.health, cols("health", 1, band), health);
      const an = await api("api/v1/anomalies?limit=12");
      table(lists.anom, [
        { label: "time", value: (e) => fmt.time(e.at_s) },
        { label: "battery", value: (e) => batteryLink(e.battery_id) },
        { label: "kind", value: (e) => chip(fmt.label(e.kind), "anomaly") },
        { label: "score", num: true, value: (e) => fmt.num(e.score, 2) },
      ], an.events, "No anomaly events.");
    }

    // ------------------------------------------------------------ planner
    async function loadRoster() {
      const roster = await api("api/v1/planner/roster");
      state.depots = roster.depots;
    }

    async function loadPlanner() {
      let plan = null;
      try {
        if (!state.depots.length) await loadRoster();
        plan = await api("api/v1/planner/plan");
      } catch (err) {
        if (!(err instanceof BMS.ApiError) || (err.status !== 404 && err.status !== 503)) throw err;
        planSub.textContent = err.status === 503 ? "planner not running" : "no plan yet";
        planBox.replaceChildren(el("p", { class: "empty", text: err.status === 503 ? "The planner is not running." : "No plan yet: the first round has not run. Re-plan to make one." }));
      }
      state.plan = plan;
      if (plan) renderPlan(plan);
      drawMap();
      const q = await api("api/v1/planner/queue?limit=15").catch((err) => {
        if (err instanceof BMS.ApiError && err.status === 503) return null;
        throw err;
      });
      if (!q) { queueSub.textContent = "planner not running"; table(queue, [{ label: "job", value: () => "" }], [], "The planner is not running."); return; }
      queueSub.textContent = `${fmt.int(q.total)} open job${q.total === 1 ? "" : "s"}, most valuable first`;
      queue.dataset.total = String(q.total);
      table(queue, [
        { label: "battery", value: (j) => batteryLink(j.battery_id) },
        { label: "job", value: (j) => chip(fmt.label(j.kind), "kind-" + j.kind) },
        { label: "value", num: true, value: (j) => fmt.eur(j.value) },
        { label: "severity", value: (j) => (j.severity === "critical" ? chip("critical", "critical") : "normal") },
        { label: "deadline", value: (j) => (j.deadline_s ? fmt.hm(j.deadline_s) : "–") },
        { label: "order", value: (j) => (j.work_order_id ? `#${j.work_order_id}${j.in_progress ? " (en route)" : ""}` : "–") },
      ], q.jobs, "The queue is empty.");
    }

    function renderPlan(plan) {
      planSub.textContent = `#${plan.plan_id} · ${plan.reason} · ${fmt.dateTime(plan.created_at_s)}`;
      const tiles = el("div", { class: "kpis compact" },
        kpi("Value collected", fmt.eur(plan.value_collected)),
        kpi("Value dropped", fmt.eur(plan.value_dropped), null, plan.value_dropped > 0 ? "warn" : ""),
        kpi("Distance", fmt.num(plan.distance_m / 1000), "km"),
        kpi("Jobs routed", `${fmt.int(plan.jobs - plan.dropped.length)} / ${fmt.int(plan.jobs)}`),
        kpi("Solve time", fmt.num(plan.solve_time_s, 1), "s"));
      tiles.id = "plan-kpis";
      const routes = el("table", { class: "data", id: "plan-routes" });
      table(routes, [
        { label: "technician", value: (r) => { const s = el("span", { class: "sw" }); s.style.background = ROUTE_COLORS[plan.routes.indexOf(r) % ROUTE_COLORS.length]; return el("span", { class: "legend" }, el("span", {}, s, r.technician_id)); } },
        { label: "depot", value: (r) => r.depot_id },
        { label: "stops", num: true, value: (r) => r.stops.length },
        { label: "distance", num: true, value: (r) => fmt.km(r.distance_m) },
        { label: "value", num: true, value: (r) => fmt.eur(r.stops.reduce((a, s) => a + s.value, 0)) },
        { label: "out – back", value: (r) => `${fmt.hm(r.depart_s)} – ${fmt.hm(r.return_s)}` },
      ], plan.routes, "No technician is routed.");
      planBox.replaceChildren(tiles, routes);
    }

    async function replanNow() {
      replan.disabled = true;
      try {
        let job = await api("api/v1/planner/plan", { method: "POST" });
        BMS.toast(`Re-planning (${job.job_id})…`);
        for (let k = 0; k < 120 && (job.state === "queued" || job.state === "running"); k++) {
          await new Promise((r) => setTimeout(r, 1000));
          job = await api(job.status_url.replace(/^\//, ""));
        }
        if (job.state === "succeeded") BMS.toast(`Plan #${job.plan_id} is ready.`);
        else BMS.toast(`Re-plan ${job.state}: ${job.error || "still running"}`, job.state === "failed");
        planners.plan.now();
      } catch (err) {
        BMS.toast(err.message, true);
      } finally {
        replan.disabled = false;
      }
    }

    const planners = {
      map: new BMS.Poller("map", loadMap, 5000),
      summary: new BMS.Poller("summary", loadSummary, 5000),
      plan: new BMS.Poller("planner", loadPlanner, 10000),
      roster: new BMS.Poller("roster", loadRoster, 60000),
    };
    drawLegend();
    for (const p of Object.values(planners)) p.start();
    alerts.start();
    return {
      unmount() {
        for (const p of Object.values(planners)) p.stop();
        alerts.stop();
        geo.destroy();
      },
    };
  }

  BMS.shell.register("fleet", { title: "Fleet", roles: ["fleet_manager"], nav: true, mount });
  BMS.fleet = { inferCellKm, zoneCell };
})(window.BMS);
