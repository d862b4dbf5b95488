/* The alert list: open alerts, live from the server-sent event stream, with acknowledge
 * and silence buttons and the active silences. Used by the fleet page (all alerts), the
 * battery page (that battery's) and the ops page.
 *
 * It loads the list once the stream is open (so no change falls between the two), then
 * applies each `alert` event to it; the stream resumes after a disconnect with
 * Last-Event-ID. A slow poll re-reads the list anyway, in case the stream is down.
 */
"use strict";

(function (BMS) {
  const { el, api, fmt, chip, query } = BMS;
  const OPEN = ["pending", "firing", "acknowledged"];
  const SEVERITY_RANK = { critical: 0, warning: 1, info: 2 };
  const STATE_RANK = { firing: 0, pending: 1, acknowledged: 2, resolved: 3 };
  const SILENCE_CHOICES = [[3600, "1 h"], [4 * 3600, "4 h"], [24 * 3600, "24 h"], [7 * 86400, "7 d"]];

  class AlertsPanel {
    /** @param options {batteryId: only this battery's alerts, title, limit} */
    constructor({ batteryId = null, title = "Alerts", limit = 200 } = {}) {
      this.batteryId = batteryId;
      this.limit = limit;
      this.filter = "open";
      this.alerts = new Map();
      this.counts = {};
      this.silences = [];
      this.openForm = null; // id of the alert whose silence form is open
      this.events = 0;

      this.list = el("ul", { class: "alert-list", id: "alerts", dataset: { count: "0" } });
      this.countsBox = el("div", { class: "counts", id: "alert-counts" });
      this.streamLight = el("span", { class: "chip", id: "alert-stream", text: "connecting" });
      this.filterSelect = el("select", { "aria-label": "Alert state", onchange: () => { this.filter = this.filterSelect.value; this.refresh(); } },
        ["open", "firing", "pending", "acknowledged", "resolved"].map((s) => el("option", { value: s, text: s })));
      this.silenceBox = el("div", { id: "silences" });
      this.node = BMS.card(title, {
        tools: [this.streamLight, this.filterSelect],
        bodyClass: "flush",
        body: [el("div", { class: "counts-bar" }, this.countsBox), el("div", { class: "scroll" }, this.list)],
        foot: this.silenceBox,
        id: "alerts-card",
      });
      this.stream = new BMS.EventStream("api/v1/alerts/stream", {
        onOpen: () => this.refresh(),
        onEvent: (ev) => this.onEvent(ev),
        onState: (s) => this.setStreamState(s),
      });
      this.poller = new BMS.Poller("alerts", () => this.refresh(), 60000);
    }

    start() { this.stream.start(); this.poller.start(); return this; }
    stop() { this.stream.stop(); this.poller.stop(); }

    setStreamState(state) {
      this.streamLight.textContent = state === "live" ? "live" : state;
      this.streamLight.className = "chip " + (state === "live" ? "resolved" : "pending");
      this.node.dataset.stream = state;
    }

    async refresh() {
      const body = await api("api/v1/alerts" + query({ state: this.filter, battery_id: this.batteryId, limit: this.limit }));
      this.alerts = new Map(body.alerts.map((a) => [a.id, a]));
      this.counts = body.counts || {};
      const s = await api("api/v1/silences").catch(() => ({ silences: [] }));
      this.silences = s.silences;
      this.list.dataset.loaded = "1";
      this.render();
    }

    /** One state change from the stream: update the alert in place. */
    onEvent(ev) {
      if (ev.type !== "alert") return;
      const { transition, alert } = JSON.parse(ev.data);
      this.events += 1;
      this.node.dataset.events = String(this.events);
      if (this.batteryId && alert.battery_id !== this.batteryId) return;
      if (OPEN.includes(transition.from_state)) this.counts[transition.from_state] = Math.max(0, (this.counts[transition.from_state] || 1) - 1);
      if (OPEN.includes(transition.to_state)) this.counts[transition.to_state] = (this.counts[transition.to_state] || 0) + 1;
      if (this.matches(alert)) this.alerts.set(alert.id, alert);
      else this.alerts.delete(alert.id);
      this.render();
    }

    matches(alert) {
      return this.filter === "open" ? OPEN.includes(alert.state) : alert.state === this.filter;
    }

    render() {
      const open = OPEN.filter((s) => this.counts[s]);
      this.countsBox.replaceChildren(...open.map((s) => chip(`${this.counts[s]} ${s}`, s)));
      this.countsBox.parentElement.hidden = !open.length;
      const rows = [...this.alerts.values()].sort((a, b) =>
        (STATE_RANK[a.state] - STATE_RANK[b.state]) || (SEVERITY_RANK[a.severity] - SEVERITY_RANK[b.severity]) || (b.started_at_s - a.started_at_s));
      this.list.dataset.count = String(rows.length);
      this.list.replaceChildren(...(rows.length ? rows.map((a) => this.item(a)) : [el("li", { class: "empty", text: this.filter === "open" ? "No open alerts." : `No ${this.filter} alerts.` })]));
      this.renderSilences();
    }

    item(a) {
      const actions = [];
      if (a.state === "firing") {
        actions.push(el("button", { class: "btn small", type: "button", dataset: { action: "ack" }, text: "Acknowledge", onclick: (ev) => this.acknowledge(a, ev.target) }));
      }
      if (a.state !== "resolved" && !a.silenced_by) {
        actions.push(el("button", { class: "btn small", type: "button", dataset: { action: "silence" }, text: "Silence", onclick: () => { this.openForm = this.openForm === a.id ? null : a.id; this.render(); } }));
      }
      const where = [];
      if (a.battery_id) where.push(BMS.views.has("battery") && BMS.shell.me && BMS.shell.me.role === "fleet_manager"
        ? el("a", { href: "#battery/" + encodeURIComponent(a.battery_id), text: a.battery_id })
        : el("span", { class: "mono", text: a.battery_id }));
      if (a.vehicle_id) where.push(el("span", { text: a.vehicle_id }));
      if (a.zone) where.push(el("span", { text: a.zone }));
      const meta = [
        ...where,
        el("span", { text: `started ${fmt.ago(a.started_at_s)}`, title: fmt.dateTime(a.started_at_s) }),
        a.acknowledged_by ? el("span", { text: `acknowledged by ${a.acknowledged_by}` }) : null,
        a.silenced_by ? el("span", { text: `silenced (#${a.silenced_by})` }) : null,
        a.inhibited_by ? el("span", { text: `inhibited by ${a.inhibited_by}` }) : null,
      ];
      return el("li", { class: `alert-item sev-${a.severity} state-${a.state}`, dataset: { alertId: a.id, state: a.state, key: a.key } },
        el("div", { class: "alert-top" }, chip(a.severity, a.severity), chip(a.state, a.state),
          el("span", { class: "muted", text: fmt.label(a.kind) }),
          el("div", { class: "alert-actions" }, actions)),
        el("div", { class: "alert-summary", text: a.summary }),
        el("div", { class: "alert-meta" }, meta),
        this.openForm === a.id ? this.silenceForm(a) : null);
    }

    silenceForm(a) {
      const duration = el("select", { name: "duration" }, SILENCE_CHOICES.map(([s, label]) => el("option", { value: s, text: label })));
      const comment = el("input", { name: "comment", placeholder: "Why (optional)", maxlength: 2000 });
      return el("form", {
        class: "inline-form silence-form",
        onsubmit: async (ev) => {
          ev.preventDefault();
          try {
            const s = await api("api/v1/silences", { method: "POST", body: { matchers: { key: a.key }, duration_s: Number(duration.value), comment: comment.value } });
            BMS.toast(`Silenced “${a.key}” until ${fmt.dateTime(s.ends_at_s)}.`);
            this.openForm = null;
            await this.refresh();
          } catch (err) { BMS.toast(err.message, true); }
        },
      },
      el("label", { class: "field" }, "Silence for", duration),
      el("label", { class: "field" }, "Comment", comment),
      el("button", { class: "btn primary small", type: "submit", text: "Silence" }),
      el("button", { class: "btn small", type: "button", text: "Cancel", onclick: () => { this.openForm = null; this.render(); } }));
    }

    async acknowledge(a, button) {
      button.disabled = true;
      try {
        const acked = await api(`api/v1/alerts/${a.id}/acknowledge`, { method: "POST", body: { note: null } });
        // The stream will say the same; showing it now makes the click feel immediate.
        if (this.matches(acked)) this.alerts.set(acked.id, acked); else this.alerts.delete(acked.id);
        this.render();
      } catch (err) {
        BMS.toast(err.message, true);
        button.disabled = false;
      }
    }

    renderSilences() {
      if (!this.silences.length) { this.silenceBox.replaceChildren(el("span", { text: "No active silences." })); return; }
      this.silenceBox.replaceChildren(el("details", {},
        el("summary", { text: `${this.silences.length} active silence${this.silences.length > 1 ? "s" : ""}` }),
        el("ul", { class: "alert-list" }, this.silences.map((s) => el("li", { class: "alert-item", dataset: { silenceId: s.id } },
          el("div", { class: "alert-top" },
            el("span", { class: "mono", text: Object.entries(s.matchers).map(([k, v]) => `${k}=${v}`).join(", ") }),
            el("div", { class: "alert-actions" }, el("button", {
              class: "btn small danger", type: "button", text: "Expire",
              onclick: async () => {
                try { await api(`api/v1/silences/${s.id}`, { method: "DELETE" }); await this.refresh(); }
                catch (err) { BMS.toast(err.message, true); }
              },
            }))),
          el("div", { class: "alert-meta" }, el("span", { text: `by ${s.author}` }), el("span", { text: `until ${fmt.dateTime(s.ends_at_s)}` }),
            s.comment ? el("span", { text: s.comment }) : null))))));
    }
  }

  BMS.AlertsPanel = AlertsPanel;
})(window.BMS);
