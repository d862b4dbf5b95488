/* The technician's view (#route): today's route as an ordered list and on the map, each
 * stop's job with the battery's facts as the planner queued it (no battery read: a
 * technician's token cannot make one), and the buttons that move the stop's work order on:
 * en route, done (with the swap record: which battery came out, which went in) or failed
 * (with a reason). Everything goes through the API with the technician's own token.
 */
"use strict";

(function (BMS) {
  const { el, api, fmt, chip, table, card } = BMS;
  const SWAP_KINDS = ["battery_swap", "battery_replacement"];
  const KIND_LABEL = { battery_swap: "Swap", battery_replacement: "Replace", inspection: "Inspect" };
  const STATE_COLOR = { done: "#2f9e5b", failed: "#d23a3a", cancelled: "#9aa3b2", en_route: "#ea580c" };
  const FINISHED = ["done", "failed", "cancelled"];

  function mount(main, _param, me) {
    const techId = me.subject;
    const state = { route: null, orders: new Map(), form: null };

    const sub = el("span", { class: "sub", id: "route-sub" });
    const summary = el("div", { class: "kpis", id: "route-kpis" });
    const stops = el("ol", { class: "stops", id: "stops" });
    const note = el("p", { class: "empty", id: "route-note", hidden: true });
    const canvas = el("canvas", { class: "map route", id: "route-map", "aria-label": "Map of my route" });
    const ordersTable = el("table", { class: "data", id: "orders" });

    main.append(
      el("div", { class: "page-head" }, el("h1", { text: "Today’s route" }), sub),
      summary,
      el("div", { class: "grid g-route" },
        card("Stops", { sub: el("span", { class: "sub", text: "in the planned order" }), bodyClass: "flush", body: [note, stops] }),
        card("Map", { sub: el("span", { class: "sub", text: "numbers follow the route" }), bodyClass: "flush", body: el("div", { class: "map-wrap" }, canvas) })),
      card("My work orders", { bodyClass: "flush scroll", body: ordersTable }));

    const geo = new BMS.GeoMap(canvas, {
      emptyText: "No stops to show",
      describe: (kind, s) => (kind === "stop" ? [`${s.label}. ${KIND_LABEL[s.kind] || fmt.label(s.kind)} · ${s.vehicle_id}`, `battery ${s.battery_id}`, `ETA ${fmt.hm(s.eta_s)} · ${fmt.label(s.state)}`] : null),
    });

    const orderOf = (stop) => (stop.work_order_id ? state.orders.get(stop.work_order_id) : undefined);
    const stateOf = (stop) => (orderOf(stop) ? orderOf(stop).state : "no order");

    function kpi(label, value, unit) {
      return el("div", { class: "kpi" }, el("div", { class: "label", text: label }),
        el("div", { class: "value" }, String(value), unit && value !== "–" ? el("small", { text: unit }) : null));
    }

    async function load() {
      const [route, orders] = await Promise.all([
        api(`api/v1/technicians/${encodeURIComponent(techId)}/route`).catch((err) => {
          if (err instanceof BMS.ApiError && (err.status === 404 || err.status === 503)) return { stops: [], note: err.status === 503 ? "the planner is not running" : err.message };
          throw err;
        }),
        api("api/v1/work-orders?limit=500"),
      ]);
      state.route = route;
      state.orders = new Map(orders.orders.map((o) => [o.id, o]));
      render();
    }

    function render() {
      const route = state.route;
      const done = route.stops.filter((s) => FINISHED.includes(stateOf(s))).length;
      sub.textContent = `${techId}${route.depot_id ? " · depot " + route.depot_id : ""}`;
      summary.replaceChildren(
        kpi("Stops", `${done} / ${route.stops.length}`, "done"),
        kpi("Distance", BMS.known(route.distance_m) ? fmt.num(route.distance_m / 1000) : "–", "km"),
        kpi("Out", fmt.hm(route.depart_s)),
        kpi("Back", fmt.hm(route.return_s)),
        kpi("Batteries loaded", fmt.int(route.batteries_loaded)));
      note.hidden = route.stops.length > 0;
      note.textContent = route.stops.length ? "" : `No stops for you: ${route.note || "none in the latest plan"}.`;
      // An open form keeps its inputs: the list is redrawn once it is closed.
      if (!state.form) renderStops();
      const mapStops = route.stops.map((s, i) => ({ ...s, label: String(i + 1), state: stateOf(s), color: STATE_COLOR[stateOf(s)] }));
      geo.update({ routes: mapStops.length ? [{ color: "#2563eb", path: mapStops.map((s) => [s.lat, s.lon]), stops: mapStops }] : [] });
      table(ordersTable, [
        { label: "order", value: (o) => `#${o.id}` },
        { label: "job", value: (o) => chip(KIND_LABEL[o.kind] || fmt.label(o.kind), "kind-" + o.kind) },
        { label: "state", value: (o) => chip(fmt.label(o.state), o.state) },
        { label: "vehicle", value: (o) => o.vehicle_id },
        { label: "battery", value: (o) => el("span", { class: "mono", text: o.battery_id }) },
        { label: "updated", value: (o) => fmt.dateTime(o.updated_at_s) },
      ], [...state.orders.values()].reverse(), "No work orders assigned to you.");
    }

    function renderStops() {
      const current = state.route.stops.findIndex((s) => !FINISHED.includes(stateOf(s)));
      stops.replaceChildren(...state.route.stops.map((s, i) => stopItem(s, i, i === current)));
    }

    function stopItem(s, i, current) {
      const order = orderOf(s);
      const st = stateOf(s);
      const facts = [
        ["Vehicle", el("span", { text: s.vehicle_id })],
        ["Battery", el("span", { class: "mono", text: s.battery_id })],
        ["Charge", fmt.pct(s.soc_pct)],
        ["Health", BMS.known(s.health_score) ? `${fmt.num(s.health_score, 0)} / 100` : "–"],
        ["Position", `${fmt.num(s.lat, 5)}, ${fmt.num(s.lon, 5)}`],
        ["On site", fmt.duration(s.service_s)],
      ];
      return el("li", { class: `stop state-${st.replace(" ", "_")}${current ? " current" : ""}`, dataset: { orderId: s.work_order_id ?? "", state: st, battery: s.battery_id } },
        el("div", { class: "stop-no", text: String(i + 1) }),
        el("div", {},
          el("div", { class: "stop-head" },
            chip(KIND_LABEL[s.kind] || fmt.label(s.kind), "kind-" + s.kind),
            chip(fmt.label(st), st.replace(" ", "_")),
            ...(s.anomaly_flags || []).map((f) => chip(fmt.label(f), "anomaly")),
            el("span", { class: "eta", text: `ETA ${fmt.hm(s.eta_s)}` })),
          el("div", { class: "stop-facts" }, facts.map(([label, value]) => el("div", {}, el("span", { class: "label", text: label }), value))),
          el("div", { class: "stop-actions" }, actionsFor(s, order)),
          state.form && state.form.orderId === s.work_order_id ? formFor(s, order, state.form.kind) : null));
    }

    function actionsFor(s, order) {
      if (!order) return [el("span", { class: "muted", text: "No work order yet." })];
      const open = (kind) => () => { state.form = { orderId: order.id, kind }; renderStops(); };
      if (order.state === "assigned") {
        return [el("button", { class: "btn primary", type: "button", dataset: { action: "en_route" }, text: "On my way", onclick: () => transition(order, { state: "en_route" }) })];
      }
      if (order.state === "en_route") {
        return [
          el("button", { class: "btn primary", type: "button", dataset: { action: "done" }, text: SWAP_KINDS.includes(order.kind) ? "Done: record swap" : "Done", onclick: open("done") }),
          el("button", { class: "btn danger", type: "button", dataset: { action: "failed" }, text: "Failed", onclick: open("failed") }),
        ];
      }
      return [];
    }

    function formFor(s, order, kind) {
      const close = () => { state.form = null; renderStops(); };
      if (kind === "failed") {
        const reason = el("input", { name: "reason", required: true, maxlength: 2000, placeholder: "e.g. vehicle not found at the position" });
        return el("form", {
          class: "inline-form failed-form",
          onsubmit: (ev) => { ev.preventDefault(); transition(order, { state: "failed", note: reason.value.trim() }); },
        }, el("label", { class: "field" }, "Why did it fail?", reason),
        el("button", { class: "btn danger", type: "submit", text: "Report failed" }),
        el("button", { class: "btn", type: "button", text: "Cancel", onclick: close }));
      }
      const noteInput = el("input", { name: "note", maxlength: 2000, placeholder: "optional" });
      if (!SWAP_KINDS.includes(order.kind)) {
        return el("form", {
          class: "inline-form done-form",
          onsubmit: (ev) => { ev.preventDefault(); transition(order, { state: "done", note: noteInput.value.trim() || null }); },
        }, el("label", { class: "field" }, "Findings", noteInput),
        el("button", { class: "btn primary", type: "submit", text: "Report done" }),
        el("button", { class: "btn", type: "button", text: "Cancel", onclick: close }));
      }
      // The swap record: the vehicle, the battery taken out (the order's) and the one put in.
      const vehicle = el("input", { name: "vehicle_id", required: true, maxlength: 64, value: order.vehicle_id });
      const out = el("input", { name: "battery_out_id", required: true, maxlength: 64, value: order.battery_id });
      const inn = el("input", { name: "battery_in_id", required: true, maxlength: 64, placeholder: "scan or type the new battery's id" });
      return el("form", {
        class: "inline-form done-form",
        onsubmit: (ev) => {
          ev.preventDefault();
          transition(order, {
            state: "done", note: noteInput.value.trim() || null,
            swap: { vehicle_id: vehicle.value.trim(), battery_out_id: out.value.trim(), battery_in_id: inn.value.trim() },
          });
        },
      }, el("label", { class: "field" }, "Vehicle", vehicle),
      el("label", { class: "field" }, "Battery out", out),
      el("label", { class: "field" }, "Battery in", inn),
      el("label", { class: "field" }, "Note", noteInput),
      el("button", { class: "btn primary", type: "submit", text: "Record swap" }),
      el("button", { class: "btn", type: "button", text: "Cancel", onclick: close }));
    }

    async function transition(order, body) {
      try {
        const updated = await api(`api/v1/work-orders/${order.id}/transition`, { method: "POST", body });
        state.orders.set(updated.id, updated);
        state.form = null;
        BMS.toast(`Order #${updated.id}: ${fmt.label(updated.state)}.`);
        render();
        poller.now();
      } catch (err) {
        BMS.toast(err.message, true);
      }
    }

    const poller = new BMS.Poller("route", load, 10000).start();
    return { unmount() { poller.stop(); geo.destroy(); } };
  }

  BMS.shell.register("route", { title: "My route", roles: ["technician"], nav: true, mount });
})(window.BMS);
