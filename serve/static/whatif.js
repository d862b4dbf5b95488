/* The what-if view (#whatif, #whatif/<job id>): start a simulation of a shipped scenario,
 * follow the queued and running jobs (polled every 2 s), cancel one, and read a finished
 * job: its headline KPIs and, against the baseline run on the same seeds, every KPI's two
 * means and their paired difference with its 95 % interval.
 *
 * POST /api/v1/simulations queues the job; GET /api/v1/simulations/<id> is polled while it
 * is queued or running. The presets (names, descriptions, sizes) and the limits of one
 * request come from GET /api/v1/simulations/presets.
 */
"use strict";

(function (BMS) {
  const { el, api, fmt, chip, table, card } = BMS;

  const POLL_MS = 2000;
  const ACTIVE = new Set(["queued", "running"]);
  const STATE_CHIP = { queued: "pending", running: "info", done: "done", failed: "failed", cancelled: "cancelled" };
  // The KPIs shown as tiles of a finished job, in this order.
  const HEADLINE = [
    ["availability_pct", "Availability"],
    ["rides_served", "Rides served"],
    ["rides_lost_low_charge", "Lost: low charge"],
    ["rides_lost_no_vehicle", "Lost: no vehicle"],
    ["swaps_done", "Swaps"],
    ["technician_utilisation_pct", "Technician use"],
    ["cost_total_eur", "Cost"],
    ["cost_per_ride_eur", "Cost per ride"],
  ];

  /** A KPI's value in its unit (the name says which: _pct, _eur, _km, _kwh, _hours). */
  function kpiValue(kpi, x) {
    if (!BMS.known(x)) return "–";
    if (kpi.endsWith("_pct")) return fmt.pct(x, 1);
    if (kpi.endsWith("_eur")) return fmt.eur(x);
    return Math.abs(x) >= 100 ? fmt.int(x) : fmt.num(x, 1);
  }

  /** A difference with its sign; of a percentage, in percentage points. */
  function signed(kpi, x) {
    if (!BMS.known(x)) return "–";
    const sign = x > 0 ? "+" : x < 0 ? "−" : "±";
    return sign + (kpi.endsWith("_pct") ? `${fmt.num(Math.abs(x), 1)} pp` : kpiValue(kpi, Math.abs(x)));
  }

  /** "cost_per_ride_eur" -> "cost per ride": the value shows the unit of % and € KPIs. */
  function kpiLabel(kpi) { return fmt.label(kpi.replace(/_(eur|pct)$/, "")); }

  function tile(label, value, sub, id) {
    return el("div", { class: "kpi", dataset: { kpi: id } }, el("div", { class: "label", text: label }),
      el("div", { class: "value" }, value, sub ? el("small", { text: sub }) : null));
  }

  function stateChip(state) { return chip(state, STATE_CHIP[state] || ""); }

  /** The scenario a job is about: the last one (the baseline, when compared, runs first). */
  function scenarioOf(job) { return job.scenarios[job.scenarios.length - 1]; }

  function mount(main, param) {
    let selected = param || null;
    let presets = [];

    // ------------------------------------------------------------ the form
    const presetSelect = el("select", { id: "whatif-preset", name: "preset", required: true });
    const seeds = el("input", { id: "whatif-seeds", name: "seeds", placeholder: "1, 2, 3", autocomplete: "off", size: 14 });
    const compare = el("input", { id: "whatif-baseline", name: "compare_with_baseline", type: "checkbox", checked: true });
    const start = el("button", { class: "btn primary", type: "submit", id: "whatif-start", text: "Start simulation" });
    const presetInfo = el("p", { class: "muted", id: "whatif-preset-info" });
    const limits = el("span", { class: "sub", id: "whatif-limits" });
    const form = el("form", { id: "whatif-form" },
      el("div", { class: "row" },
        el("label", { class: "field" }, "Scenario", presetSelect),
        el("label", { class: "field" }, "Seeds (one run each)", seeds),
        el("label", { class: "check" }, compare, "compare with the baseline"),
        start),
      presetInfo);

    // ------------------------------------------------------------ the jobs and the selected one
    const jobs = el("table", { class: "data", id: "whatif-jobs" });
    const jobBox = el("div", { id: "whatif-job-body" });
    const jobSub = el("span", { class: "sub", id: "whatif-job-sub" });
    const cancel = el("button", { class: "btn small danger", type: "button", id: "whatif-cancel", text: "Cancel", hidden: true, onclick: () => cancelJob() });
    const jobCard = card("Simulation", { sub: jobSub, tools: cancel, body: jobBox, id: "whatif-job" });
    const updated = el("span", { class: "sub" });

    main.append(
      el("div", { class: "page-head" }, el("h1", { text: "What-if" }), el("span", { class: "sub", text: "simulate a change before making it" }), updated),
      card("New simulation", { sub: limits, body: form, id: "whatif-new" }),
      el("div", { class: "grid g-map top" },
        jobCard,
        card("Simulations", { sub: el("span", { class: "sub", text: "newest first" }), bodyClass: "flush scroll", body: jobs })));

    function describePreset() {
      const p = presets.find((x) => x.name === presetSelect.value);
      if (!p) { presetInfo.textContent = ""; return; }
      presetInfo.textContent = `${p.description} (${fmt.int(p.vehicles)} vehicles, ${p.days} days, ${p.technicians} technicians; seeds ${p.seeds.join(", ")})`;
      seeds.placeholder = p.seeds.join(", ");
    }
    presetSelect.addEventListener("change", describePreset);

    async function loadPresets() {
      const body = await api("api/v1/simulations/presets");
      presets = body.presets;
      const baselineFirst = [...presets].sort((a, b) => (a.name === body.baseline ? -1 : b.name === body.baseline ? 1 : a.name.localeCompare(b.name)));
      presetSelect.replaceChildren(...baselineFirst.map((p) => el("option", { value: p.name, text: fmt.label(p.name) })));
      const firstChange = baselineFirst.find((p) => p.name !== body.baseline);
      if (firstChange) presetSelect.value = firstChange.name;
      const l = body.limits;
      limits.textContent = `up to ${fmt.int(l.max_vehicles)} vehicles, ${l.max_days} days and ${l.max_seeds} seeds a request`;
      describePreset();
    }

    /** "1, 2 3" -> [1, 2, 3]; empty -> null (the scenario's own seeds). */
    function parseSeeds(text) {
      const parts = text.split(/[\s,;]+/).filter(Boolean);
      if (!parts.length) return null;
      if (!parts.every((p) => /^\d{1,9}$/.test(p))) throw new Error(`Seeds: expected whole numbers like "1, 2, 3", got "${text}".`);
      return parts.map(Number);
    }

    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      let body;
      try {
        body = { preset: presetSelect.value, compare_with_baseline: compare.checked };
        const s = parseSeeds(seeds.value);
        if (s) body.seeds = s;
      } catch (err) { BMS.toast(err.message, true); return; }
      start.disabled = true;
      try {
        const job = await api("api/v1/simulations", { method: "POST", body });
        BMS.toast(`Simulation ${job.job_id} is ${job.state}.`);
        select(job.job_id);
      } catch (err) {
        if (!(err instanceof BMS.Unauthorized)) BMS.toast(err.message, true);
      } finally {
        start.disabled = false;
      }
    });

    function select(jobId) {
      selected = jobId;
      // The hash names the job (a reload shows it again) without remounting the view.
      history.replaceState(null, "", "#whatif/" + encodeURIComponent(jobId));
      poller.now();
    }

    async function cancelJob() {
      if (!selected) return;
      cancel.disabled = true;
      try {
        const job = await api(`api/v1/simulations/${encodeURIComponent(selected)}/cancel`, { method: "POST" });
        BMS.toast(`Simulation ${job.job_id} is ${job.state}.`);
      } catch (err) {
        if (!(err instanceof BMS.Unauthorized)) BMS.toast(err.message, true);
      } finally {
        cancel.disabled = false;
        poller.now();
      }
    }

    // ------------------------------------------------------------ drawing
    function drawJobs(list) {
      jobs.dataset.count = String(list.length);
      table(jobs, [
        { label: "job", value: (j) => el("a", { href: "#whatif/" + encodeURIComponent(j.job_id), class: "mono nowrap", dataset: { jobId: j.job_id }, text: j.job_id, onclick: (ev) => { ev.preventDefault(); select(j.job_id); } }) },
        { label: "scenario", value: (j) => j.scenarios.filter((s) => s !== j.baseline).join(", ") || j.scenarios.join(", ") },
        { label: "state", value: (j) => stateChip(j.state) },
        { label: "done", num: true, value: (j) => fmt.pct(100 * j.progress.overall) },
        { label: "by", value: (j) => j.submitted_by },
        { label: "submitted", value: (j) => fmt.dateTime(j.submitted_at_s) },
      ], list, "No simulation yet: start one above.");
    }

    function progressLine(job) {
      const p = job.progress;
      const track = el("div", { class: "bar-track", title: fmt.pct(100 * p.overall, 0) });
      const fill = el("div", { class: "bar-fill", id: "whatif-progress" });
      fill.style.width = `${Math.max(0, Math.min(100, 100 * p.overall))}%`;
      fill.style.background = "var(--accent)";
      track.append(fill);
      let text;
      if (job.state === "queued") text = job.queue_position === 1 ? "next in line" : `queued, ${job.queue_position ?? "?"} in line`;
      else if (job.state === "running" && p.scenario !== null) text = `run ${p.run_index + 1} of ${p.runs}: ${p.scenario}, seed ${p.seed} (${fmt.pct(100 * p.run_fraction)} of it)`;
      else text = `${p.runs} runs`;
      return [
        el("div", { class: "bar-row" }, el("span", { text: "progress" }), track, el("span", { class: "num", text: fmt.pct(100 * p.overall) })),
        el("div", { class: "muted", id: "whatif-progress-text", text }),
      ];
    }

    function facts(job) {
      const fact = (label, value) => el("div", { class: "fact" }, el("div", { class: "label", text: label }), el("div", { class: "value", text: value }));
      return el("div", { class: "facts" },
        fact("scenarios", job.scenarios.join(" vs ")),
        fact("seeds", job.seeds.join(", ")),
        fact("by", job.submitted_by),
        fact("submitted", fmt.dateTime(job.submitted_at_s)),
        fact("ran for", BMS.known(job.started_at_s) ? fmt.duration((job.finished_at_s ?? Date.now() / 1000) - job.started_at_s) : "–"));
    }

    function headline(job) {
      const scenario = scenarioOf(job);
      const stats = job.summary[scenario] || {};
      const diffs = new Map(job.comparison.filter((d) => d.scenario === scenario).map((d) => [d.kpi, d]));
      const tiles = el("div", { class: "kpis compact", id: "whatif-kpis" },
        HEADLINE.map(([kpi, label]) => {
          const d = diffs.get(kpi);
          const sub = d && BMS.known(d.relative_difference_pct) ? `${d.relative_difference_pct >= 0 ? "+" : "−"}${fmt.num(Math.abs(d.relative_difference_pct), 1)} %` : null;
          return tile(label, kpiValue(kpi, (stats[kpi] || {}).mean), sub, kpi);
        }));
      return [el("div", { class: "chart-title", text: `${fmt.label(scenario)}: mean over ${job.seeds.length} seed${job.seeds.length === 1 ? "" : "s"}${diffs.size ? ", change against the baseline" : ""}` }), tiles];
    }

    function comparisonTable(job) {
      const target = el("table", { class: "data", id: "whatif-compare" });
      table(target, [
        { label: "KPI", value: (d) => kpiLabel(d.kpi) },
        { label: "baseline", num: true, value: (d) => kpiValue(d.kpi, d.baseline_mean) },
        { label: fmt.label(scenarioOf(job)), num: true, value: (d) => kpiValue(d.kpi, d.scenario_mean) },
        { label: "difference", num: true, value: (d) => signed(d.kpi, d.mean_difference) },
        { label: "95 % interval", num: true, value: (d) => BMS.known(d.ci95_low) ? `${signed(d.kpi, d.ci95_low)} … ${signed(d.kpi, d.ci95_high)}` : "one seed" },
        { label: "change", num: true, value: (d) => BMS.known(d.relative_difference_pct) ? `${d.relative_difference_pct >= 0 ? "+" : "−"}${fmt.num(Math.abs(d.relative_difference_pct), 1)} %` : "–" },
        { label: "", value: (d) => BMS.known(d.ci95_low) && (d.ci95_low > 0 || d.ci95_high < 0) ? chip("beyond noise", "info") : "" },
      ], job.comparison, "No comparison.");
      return target;
    }

    function summaryTable(job) {
      const target = el("table", { class: "data", id: "whatif-summary" });
      const rows = Object.entries(job.summary).flatMap(([scenario, kpis]) => Object.entries(kpis).map(([kpi, s]) => ({ scenario, kpi, ...s })));
      table(target, [
        { label: "scenario", value: (r) => r.scenario },
        { label: "KPI", value: (r) => kpiLabel(r.kpi) },
        { label: "mean", num: true, value: (r) => kpiValue(r.kpi, r.mean) },
        { label: "sd", num: true, value: (r) => kpiValue(r.kpi, r.sd) },
        { label: "seeds", num: true, value: (r) => r.seeds },
      ], rows, "No summary.");
      return target;
    }

    function drawJob(job) {
      jobCard.dataset.state = job.state;
      jobCard.dataset.jobId = job.job_id;
      jobCard.querySelector("h2").textContent = `Simulation ${job.job_id}`;
      jobSub.replaceChildren(stateChip(job.state));
      cancel.hidden = !ACTIVE.has(job.state);
      const parts = [facts(job)];
      if (ACTIVE.has(job.state)) parts.push(el("div", { class: "bars" }, progressLine(job)));
      if (job.error) parts.push(el("p", { class: job.state === "failed" ? "error" : "muted", id: "whatif-error", text: job.error }));
      if (job.state === "done") {
        parts.push(...headline(job));
        parts.push(job.comparison.length ? comparisonTable(job) : summaryTable(job));
      }
      jobBox.replaceChildren(...parts);
    }

    function drawNoJob(message) {
      delete jobCard.dataset.state;
      delete jobCard.dataset.jobId;
      jobCard.querySelector("h2").textContent = "Simulation";
      jobSub.replaceChildren();
      cancel.hidden = true;
      jobBox.replaceChildren(el("p", { class: "muted", text: message }));
    }

    // ------------------------------------------------------------ refresh
    let shown = null; // {job_id, state}: a finished job is drawn once, not every poll
    async function load() {
      const list = (await api("api/v1/simulations")).simulations;
      if (!selected && list.length) selected = list[0].job_id;
      drawJobs(list);
      if (!selected) { drawNoJob("Start a simulation: it is queued, runs on its own, and its comparison shows here."); return; }
      const brief = list.find((j) => j.job_id === selected);
      if (brief && shown && shown.job_id === selected && shown.state === brief.state && !ACTIVE.has(brief.state)) return;
      let job;
      try { job = await api(`api/v1/simulations/${encodeURIComponent(selected)}`); }
      catch (err) {
        if (err instanceof BMS.ApiError && err.status === 404) { drawNoJob(`Simulation ${selected} is not known (any more).`); shown = null; return; }
        throw err;
      }
      shown = { job_id: job.job_id, state: job.state };
      drawJob(job);
      updated.textContent = `updated ${fmt.time(Date.now() / 1000)}`;
    }

    const poller = new BMS.Poller("what-if", load, POLL_MS);
    loadPresets().catch((err) => { if (!(err instanceof BMS.Unauthorized)) BMS.status.fail("what-if presets", err); });
    poller.start();
    return { unmount() { poller.stop(); } };
  }

  BMS.shell.register("whatif", { title: "What-if", roles: ["fleet_manager"], nav: true, mount });
})(window.BMS);
