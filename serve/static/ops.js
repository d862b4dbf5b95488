/* The ops view (#ops): the served models (versions, A/B split, drift), rejected telemetry,
 * and the alerts, live.
 */
"use strict";

(function (BMS) {
  const { el, api, fmt, chip, table, card } = BMS;

  function mount(main) {
    const models = el("table", { class: "data", id: "models" });
    const dlq = el("table", { class: "data", id: "dlq" });
    const recent = el("table", { class: "data", id: "dlq-recent" });
    const alerts = new BMS.AlertsPanel();
    const updated = el("span", { class: "sub", id: "ts" });
    main.append(
      el("div", { class: "page-head" }, el("h1", { text: "Operations" }), updated),
      el("div", { class: "grid g-map" },
        el("div", { class: "col" },
          card("Models", { sub: el("span", { class: "sub", text: "production, candidate split, drift" }), bodyClass: "flush", body: models }),
          el("div", { class: "grid g-2 top" },
            card("Rejected telemetry", { sub: el("span", { class: "sub", text: "by reason" }), bodyClass: "flush", body: dlq }),
            card("Newest rejects", { bodyClass: "flush scroll", body: recent }))),
        alerts.node));

    async function load() {
      const m = await api("api/v1/models");
      table(models, [
        { label: "model", value: (x) => el("b", { text: x.name }) },
        { label: "production", value: (x) => ((x.serving || {}).production_version ? `v${x.serving.production_version}` : "–") },
        { label: "candidate (share)", value: (x) => { const s = x.serving || {}; return s.candidate_version ? `v${s.candidate_version} (${fmt.num(100 * s.candidate_fraction, 0)} %)` : "–"; } },
        { label: "drift alerts", num: true, value: (x) => { const n = Object.values((x.live || {}).drift || {}).reduce((a, d) => a + (d.alerts || []).length, 0); return n ? chip(String(n), "warning") : "0"; } },
      ], m.models, "No model is registered.");
      const d = await api("api/v1/dead-letters?limit=10");
      table(dlq, [
        { label: "reason", value: ([reason]) => fmt.label(reason) },
        { label: "count", num: true, value: ([, n]) => fmt.int(n) },
      ], Object.entries(d.counts), "Nothing rejected.");
      table(recent, [
        { label: "time", value: (r) => fmt.time(r.received_at_s) },
        { label: "topic", value: (r) => el("span", { class: "mono", text: r.topic }) },
        { label: "reason", value: (r) => fmt.label(r.reason) },
      ], d.recent, "Nothing rejected.");
      updated.textContent = `updated ${fmt.time(Date.now() / 1000)}`;
    }

    const poller = new BMS.Poller("ops", load, 5000).start();
    alerts.start();
    return { unmount() { poller.stop(); alerts.stop(); } };
  }

  BMS.shell.register("ops", { title: "Operations", roles: ["ops"], nav: true, mount });
})(window.BMS);
