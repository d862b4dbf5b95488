/* What a rider sees (#near): rentable vehicles near a point, nearest first, with their
 * charge and estimated range, as a list and on a small map. The API answers vehicles
 * only (GET /api/v1/availability): nothing of the batteries behind them reaches this page.
 */
"use strict";

(function (BMS) {
  const { el, api, fmt, card, query, charts } = BMS;
  const RADII_M = [500, 1000, 2000, 5000];
  const HOME = { lat: 52.52, lon: 13.405 }; // where the search starts: the city centre

  function mount(main) {
    const state = { lat: HOME.lat, lon: HOME.lon, radius_m: 1000, vehicles: [] };

    const lat = el("input", { id: "lat", type: "number", step: "any", min: -90, max: 90, value: state.lat, required: true });
    const lon = el("input", { id: "lon", type: "number", step: "any", min: -180, max: 180, value: state.lon, required: true });
    const radius = el("select", { id: "radius" }, RADII_M.map((m) => el("option", { value: m, selected: m === state.radius_m, text: fmt.meters(m) })));
    const locate = el("button", { class: "btn", type: "button", id: "locate", text: "Use my location", hidden: !navigator.geolocation });
    const form = el("form", { id: "near", class: "row" },
      el("label", { class: "field" }, "Latitude", lat),
      el("label", { class: "field" }, "Longitude", lon),
      el("label", { class: "field" }, "Within", radius),
      el("button", { class: "btn primary", type: "submit", text: "Find vehicles" }),
      locate);
    const list = el("ul", { class: "vehicles", id: "vehicles", dataset: { count: "0" } });
    const sub = el("span", { class: "sub", id: "near-sub" });
    const canvas = el("canvas", { class: "map small", id: "near-map", "aria-label": "Map of nearby vehicles" });

    main.append(
      el("div", { class: "page-head" }, el("h1", { text: "Ride nearby" }), el("span", { class: "sub", text: "vehicles you can rent now" })),
      el("section", { class: "card block" }, el("div", { class: "card-body" }, form)),
      el("div", { class: "grid g-2 top" },
        card("Vehicles", { sub, bodyClass: "flush scroll", body: list }),
        card("Map", { sub: el("span", { class: "sub", text: "click the map to search there" }), bodyClass: "flush", body: el("div", { class: "map-wrap" }, canvas) })));

    const geo = new BMS.GeoMap(canvas, {
      pointSize: 16,
      describe: (kind, i) => {
        const v = state.vehicles[i];
        return v ? [`${i + 1}. ${v.vehicle_id}`, `${fmt.meters(v.distance_m)} away`, `${fmt.pct(v.soc_pct)} · ${fmt.num(v.est_range_km)} km range`] : null;
      },
      onClick: (la, lo) => { lat.value = la.toFixed(5); lon.value = lo.toFixed(5); search(); },
    });

    async function load() {
      const body = await api("api/v1/availability" + query({ lat: state.lat, lon: state.lon, radius_m: state.radius_m, limit: 20 }));
      state.vehicles = body.vehicles;
      sub.textContent = `${body.vehicles.length} within ${fmt.meters(state.radius_m)} · as of ${fmt.time(body.as_of_s)}`;
      list.dataset.count = String(body.vehicles.length);
      list.replaceChildren(...(body.vehicles.length ? body.vehicles.map((v, i) => {
        const bar = el("div");
        bar.style.width = `${Math.max(0, Math.min(100, v.soc_pct))}%`;
        bar.style.background = charts.ramp(v.soc_pct / 100);
        return el("li", { class: "vehicle", dataset: { vehicle: v.vehicle_id } },
          el("span", { class: "badge", text: String(i + 1) }),
          el("div", {}, el("div", {}, el("b", { text: v.vehicle_id }), el("span", { class: "muted", text: ` · ${fmt.meters(v.distance_m)} away` })),
            el("div", { class: "charge", title: `${fmt.pct(v.soc_pct)} charged` }, bar),
            el("div", { class: "muted", text: `${fmt.pct(v.soc_pct)} charged` })),
          el("div", { class: "range" }, `${fmt.num(v.est_range_km)} km`, el("div", { class: "muted", text: "range" })));
      }) : [el("li", { class: "empty", text: "No rentable vehicle within this distance. Try a larger one." })]));
      geo.update({
        lat: body.vehicles.map((v) => v.lat), lon: body.vehicles.map((v) => v.lon),
        colorOf: (i) => charts.ramp(Math.round(body.vehicles[i].soc_pct / 10) / 10),
        labelOf: (i) => String(i + 1),
        ...(geo.marker && geo.marker.lat === state.lat && geo.marker.lon === state.lon && geo.marker.radius_m === state.radius_m
          ? {} : { marker: { lat: state.lat, lon: state.lon, radius_m: state.radius_m } }),
      });
    }

    function search() {
      state.lat = Number(lat.value); state.lon = Number(lon.value); state.radius_m = Number(radius.value);
      poller.now();
    }

    form.addEventListener("submit", (ev) => { ev.preventDefault(); search(); });
    locate.addEventListener("click", () => navigator.geolocation.getCurrentPosition(
      (pos) => { lat.value = pos.coords.latitude.toFixed(5); lon.value = pos.coords.longitude.toFixed(5); search(); },
      (err) => BMS.toast("No location: " + err.message, true)));

    const poller = new BMS.Poller("availability", load, 15000).start();
    return { unmount() { poller.stop(); geo.destroy(); } };
  }

  BMS.shell.register("near", { title: "Ride nearby", roles: ["customer"], nav: true, mount });
})(window.BMS);
