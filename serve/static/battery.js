/* The battery page (#battery/<id>): one twin's facts, its telemetry over the last hours,
 * health score and SOH over time, the degradation forecast with its p10-p90 band, its
 * anomaly events, alerts and work orders. For the fleet manager.
 */
"use strict";

(function (BMS) {
  const { el, api, fmt, chip, table, card, query, charts } = BMS;
  const RANGES_H = [1, 6, 24];
  const TELEMETRY = [
    { key: "pack_voltage_v", title: "Pack voltage", unit: "V", color: "#2563eb", digits: 2, span: 2 },
    { key: "current_a", title: "Current", unit: "A", color: "#7c3aed", digits: 1, span: 4 },
    { key: "temp_c", title: "Temperature", unit: "°C", color: "#ea580c", digits: 1, span: 4 },
    { key: "soc_pct", title: "State of charge", unit: "%", color: "#2f9e5b", digits: 1, domain: [0, 100] },
  ];

  function fact(label, value, unit, id) {
    return el("div", { class: "fact", dataset: { fact: id || label } }, el("div", { class: "label", text: label }),
      el("div", { class: "value" }, String(value), unit && value !== "–" ? el("small", { class: "muted", text: " " + unit }) : null));
  }

  // The model scores below (health, SOH, life, priority) are kept through a model outage:
  // when one has not been refreshed for a few ticks the page says how old the oldest is,
  // and the tooltip gives each model's age.
  function staleChip(t) {
    if (!t.scores_stale) return null;
    const ages = Object.entries(t.score_age_s || {}).filter(([, a]) => BMS.known(a));
    const oldest = Math.max(...ages.map(([, a]) => a));
    const c = chip(`scores stale (${fmt.duration(oldest)})`, "warning");
    c.id = "scores-stale";
    c.title = ages.map(([m, a]) => `${m}: ${fmt.duration(a)} old`).join(", ");
    return c;
  }

  function mountEmpty(main) {
    main.append(el("div", { class: "page-head" }, el("h1", { text: "Battery" })),
      card("Open a battery", { body: el("p", { class: "muted", text: "Type a battery id in the search box at the top, or click a vehicle on the fleet map." }) }));
    return { unmount() {} };
  }

  function mount(main, batteryId) {
    if (!batteryId) return mountEmpty(main);
    const id = batteryId;
    const path = "api/v1/batteries/" + encodeURIComponent(id);
    const state = { twin: null, hours: 6, history: [] };

    const title = el("h1", { text: `Battery ${id}` });
    const chips = el("span", { id: "battery-chips", class: "counts" });
    const sub = el("span", { class: "sub", id: "battery-sub" });
    const facts = el("div", { class: "facts", id: "facts" });
    const notFound = el("div", { id: "battery-missing", hidden: true });

    const rangeSeg = el("div", { class: "seg", role: "group", "aria-label": "Time range" }, RANGES_H.map((h) => el("button", {
      type: "button", class: h === state.hours ? "on" : null, dataset: { hours: h }, text: `${h} h`,
      onclick: () => { state.hours = h; for (const b of rangeSeg.children) b.classList.toggle("on", Number(b.dataset.hours) === h); pollers.telemetry.now(); },
    })));
    const telemetryCharts = TELEMETRY.map((t) => ({ ...t, canvas: el("canvas", { class: "chart short", id: "chart-" + t.key }) }));
    const telemetryInfo = el("span", { id: "telemetry-info" });
    const healthChart = el("canvas", { class: "chart tall", id: "chart-health" });
    const healthInfo = el("span", { id: "health-info" });
    const forecastChart = el("canvas", { class: "chart tall", id: "chart-forecast" });
    const forecastInfo = el("div", { id: "forecast-info", class: "muted" });
    const anomalies = el("table", { class: "data", id: "battery-anomalies" });
    const orders = el("table", { class: "data", id: "battery-orders" });
    const alerts = new BMS.AlertsPanel({ batteryId: id, title: "Alerts of this battery", limit: 50 });

    main.append(
      el("div", { class: "page-head" }, title, chips, sub),
      notFound,
      el("section", { class: "card block", id: "battery-facts" }, el("div", { class: "card-body" }, facts)),
      el("div", { class: "grid g-map" },
        card("Telemetry", {
          sub: el("span", { class: "sub", text: "history from PostgreSQL, up to the newest sample" }),
          tools: rangeSeg,
          body: el("div", { class: "stack" }, telemetryCharts.map((t) => [
            el("div", { class: "chart-title", text: `${t.title} (${t.unit})` }),
            el("div", { class: "chart-wrap" }, t.canvas)])),
          foot: telemetryInfo,
        }),
        alerts.node),
      el("div", { class: "grid g-2" },
        card("Health over time", { sub: el("span", { class: "sub", text: "each scoring run of the model job" }), body: el("div", { class: "chart-wrap" }, healthChart), foot: healthInfo }),
        card("Degradation forecast", {
          sub: el("span", { class: "sub", text: "SOH vs. cycles, LSTM p10–p90" }),
          body: [el("div", { class: "chart-wrap" }, forecastChart), forecastInfo],
        })),
      el("div", { class: "grid g-2" },
        card("Anomaly events", { bodyClass: "flush scroll", body: anomalies }),
        card("Work orders", { bodyClass: "flush scroll", body: orders })),
    );

    // ------------------------------------------------------------ the twin
    async function loadTwin() {
      let t;
      try { t = await api(path); }
      catch (err) {
        if (err instanceof BMS.ApiError && err.status === 404) {
          notFound.hidden = false;
          notFound.replaceChildren(card("Not found", { body: el("p", { class: "error", text: `No twin for battery ${id}: it has sent no accepted telemetry.` }) }));
          return;
        }
        throw err;
      }
      const first = state.twin === null;
      state.twin = t;
      notFound.hidden = true;
      chips.replaceChildren(...[chip(fmt.label(t.health_band), t.health_band), t.charging ? chip("charging", "info") : null,
        staleChip(t), ...t.anomaly_flags.map((f) => chip(fmt.label(f), "anomaly"))].filter(Boolean));
      sub.textContent = `vehicle ${t.vehicle_id ?? "none"} · zone ${t.zone} · last sample ${fmt.ago(t.last_ts)}`;
      const rul70 = t.rul_cycles_to_70pct || {}, days70 = t.rul_days_to_70pct || {};
      const rul80 = t.rul_cycles_to_80pct || {}, days80 = t.rul_days_to_80pct || {};
      facts.replaceChildren(
        fact("State of charge", fmt.num(t.soc_pct), "%", "soc"),
        fact("Pack voltage", fmt.num(t.pack_voltage_v, 2), "V"),
        fact("Current", fmt.num(t.current_a), "A"),
        fact("Temperature", fmt.num(t.temp_c), "°C", "temp"),
        fact("Max temperature", fmt.num(t.max_temp_c), "°C"),
        fact("Health score", fmt.num(t.health_score, 0), "/ 100", "health"),
        fact("SOH (model)", fmt.num(t.soh_model_pct), "%", "soh"),
        fact("SOH (capacity)", fmt.num(t.soh_pct_est), "%"),
        fact("Capacity", BMS.known(t.capacity_est_ah) ? `${fmt.num(t.capacity_est_ah)} / ${fmt.num(t.rated_capacity_ah)}` : "–", "Ah"),
        fact("Resistance", BMS.known(t.resistance_est_ohm) ? fmt.num(t.resistance_est_ohm * 1000, 0) : "–", "mΩ"),
        fact("Cycles (EFC)", fmt.num(t.efc), null, "efc"),
        fact("Life to 80 %", BMS.known(rul80.p50) ? `${fmt.int(rul80.p50)} cyc` : "–", BMS.known(days80.p50) ? `≈ ${fmt.int(days80.p50)} d` : null),
        fact("Life to 70 %", BMS.known(rul70.p50) ? `${fmt.int(rul70.p50)} cyc` : "–", BMS.known(days70.p50) ? `≈ ${fmt.int(days70.p50)} d` : null),
        fact("Swap priority", fmt.num(t.priority), "/ 100"),
        fact("Lost rides (6 h)", fmt.num(t.lost_rides_6h, 2)),
        fact("Odometer", fmt.num(t.odometer_km, 0), "km"),
        fact("Samples", fmt.int(t.samples_total)),
      );
      if (first) { pollers.telemetry.now(); pollers.forecast.now(); }
    }

    // ------------------------------------------------------------ telemetry
    async function loadTelemetry() {
      const t = state.twin;
      if (!t || !BMS.known(t.last_ts)) {
        for (const c of telemetryCharts) charts.lineChart(c.canvas, { series: [], empty: "No telemetry yet" });
        return;
      }
      const to = t.last_ts, from = to - state.hours * 3600;
      const body = await api(`${path}/telemetry${query({ from, to, limit: 5000 })}`);
      const cols = body.columns;
      for (const c of telemetryCharts) {
        charts.lineChart(c.canvas, {
          xKind: "time", xDomain: [from, to], yDomain: c.domain, yMinSpan: c.span,
          series: [{ label: c.title, unit: c.unit, digits: c.digits, color: c.color, x: cols.ts || [], y: cols[c.key] || [] }],
          empty: `No samples in the last ${state.hours} h of this battery's history`,
        });
      }
      telemetryInfo.textContent = `${fmt.int(body.count)} samples from ${fmt.dateTime(from)} to ${fmt.dateTime(to)}`;
    }

    // ------------------------------------------------------------ health and forecast
    async function loadForecast() {
      const [h, f] = await Promise.all([api(`${path}/health-history?limit=2000`), api(`${path}/forecast`)]);
      state.history = h.points;
      const x = h.points.map((p) => p.ts);
      charts.lineChart(healthChart, {
        xKind: "time",
        series: [
          { label: "Health score", color: "#2563eb", x, y: h.points.map((p) => p.health_score), dots: h.points.length < 60, digits: 1 },
          { label: "SOH", unit: "%", color: "#2f9e5b", x, y: h.points.map((p) => p.soh_pct), dots: h.points.length < 60, digits: 1 },
        ],
        empty: "No scoring runs recorded yet (the model job writes one an hour)",
      });
      healthInfo.replaceChildren(
        el("span", { class: "legend" }, swatch("#2563eb", "health score (0–100)"), swatch("#2f9e5b", "SOH (% of rated)")),
        el("span", { text: h.count ? `${fmt.int(h.count)} runs since ${fmt.dateTime(h.points[0].ts)}` : "" }));
      drawForecast(f, h.points);
    }

    function swatch(color, label) {
      const s = el("span", { class: "sw" });
      s.style.background = color;
      return el("span", {}, s, label);
    }

    function drawForecast(f, history) {
      const polygons = [], series = [], markers = [];
      if (!f.p50) {
        // Nothing forecast yet: a lone point on an empty axis says less than a sentence.
        charts.lineChart(forecastChart, { series: [], empty: "No forecast yet" });
        forecastChart.dataset.stepped = "0";
        forecastInfo.replaceChildren(el("div", { text: "The degradation model has not stepped yet: it needs a completed capacity measurement (a full enough discharge)." }),
          f.now ? el("div", { class: "muted", text: `Now: ${fmt.num(f.now.soh_pct)} % SOH after ${fmt.num(f.now.cycles)} cycles.` }) : null);
        return;
      }
      if (f.p10 && f.p90 && f.p10.length + f.p90.length >= 3) {
        polygons.push({ color: "rgba(37, 99, 235, .16)", points: [...f.p10.map((p) => [p.cycles, p.soh_pct]), ...[...f.p90].reverse().map((p) => [p.cycles, p.soh_pct])] });
      }
      if (history.length) {
        series.push({ label: "Scored SOH", unit: "%", color: "#94a3b8", x: history.map((p) => p.efc), y: history.map((p) => p.soh_pct), dots: history.length < 20, width: 1.5 });
      }
      for (const [q, color, dash] of [["p10", "#2563eb", [4, 3]], ["p50", "#1d4ed8", null], ["p90", "#2563eb", [4, 3]]]) {
        if (f[q]) series.push({ label: q, unit: "%", color, dash, width: q === "p50" ? 2.2 : 1, x: f[q].map((p) => p.cycles), y: f[q].map((p) => p.soh_pct) });
      }
      if (f.now) markers.push({ x: f.now.cycles, y: f.now.soh_pct, color: "#131a24", label: "now" });
      charts.lineChart(forecastChart, {
        xKind: "linear", xLabel: "cycles", yFloor: 0,
        series, polygons, markers,
        hlines: f.thresholds_pct.map((v) => ({ y: v, label: `${v} %`, color: v >= 80 ? "#c7a21a" : "#d23a3a" })),
        empty: "No SOH known yet",
      });
      forecastChart.dataset.stepped = f.p50 ? "1" : "0";
      const t = state.twin || {};
      const r80 = t.rul_cycles_to_80pct || {}, r70 = t.rul_cycles_to_70pct || {};
      const span = (r) => (BMS.known(r.p50) ? `${fmt.int(r.p10)}–${fmt.int(r.p90)} more cycles (median ${fmt.int(r.p50)})` : "not forecast");
      forecastInfo.replaceChildren(el("div", { text: `80 % SOH in ${span(r80)}.` }), el("div", { text: `70 % SOH in ${span(r70)}.` }),
        el("div", { class: "muted", text: `The band joins the model's p10 and p90 points linearly; ${fmt.int(f.lstm_steps)} capacity measurements so far.` }));
    }

    // ------------------------------------------------------------ events and orders
    async function loadEvents() {
      const [an, wo] = await Promise.all([
        api(`api/v1/anomalies${query({ battery_id: id, limit: 50 })}`),
        api(`api/v1/work-orders${query({ battery_id: id, limit: 100 })}`),
      ]);
      table(anomalies, [
        { label: "time", value: (e) => fmt.dateTime(e.at_s) },
        { label: "kind", value: (e) => chip(fmt.label(e.kind), "anomaly") },
        { label: "score", num: true, value: (e) => fmt.num(e.score, 2) },
      ], an.events, "No anomaly events for this battery.");
      table(orders, [
        { label: "order", value: (o) => `#${o.id}` },
        { label: "job", value: (o) => chip(fmt.label(o.kind), "kind-" + o.kind) },
        { label: "state", value: (o) => chip(fmt.label(o.state), o.state) },
        { label: "technician", value: (o) => o.technician_id },
        { label: "vehicle", value: (o) => o.vehicle_id },
        { label: "value", num: true, value: (o) => fmt.eur(o.value) },
        { label: "updated", value: (o) => fmt.dateTime(o.updated_at_s) },
      ], [...wo.orders].reverse(), "No work orders for this battery.");
    }

    const pollers = {
      twin: new BMS.Poller("battery", loadTwin, 3000),
      telemetry: new BMS.Poller("telemetry", loadTelemetry, 10000),
      forecast: new BMS.Poller("forecast", loadForecast, 30000),
      events: new BMS.Poller("battery events", loadEvents, 10000),
    };
    pollers.twin.start();
    pollers.events.start();
    pollers.telemetry.stopped = false; // started by the first twin read (it needs last_ts)
    pollers.forecast.stopped = false;
    alerts.start();
    return {
      unmount() {
        for (const p of Object.values(pollers)) p.stop();
        alerts.stop();
      },
    };
  }

  BMS.shell.register("battery", { title: "Battery", roles: ["fleet_manager"], nav: true, mount });
})(window.BMS);
