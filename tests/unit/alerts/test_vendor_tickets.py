"""Vendor tickets (alerts.vendor_tickets): the ticket built from a real twin snapshot, the
reply parser, opening tickets once, and synchronous replies through the dispatcher."""

from __future__ import annotations

import json
import logging
import random
from typing import Any

import httpx
import pytest

from alerts.delivery import WebhookDispatcher
from alerts.vendor_tickets import InvalidVendorReply, VendorTickets, build_ticket, parse_reply
from alerts.webhooks import UrlPolicy, new_secret, verify
from contracts.alerts import Alert, AlertCategory, AlertSeverity, AlertState
from contracts.webhooks import DeliveryState, VendorTicketStatus
from contracts.work_orders import WorkOrder, WorkOrderKind, WorkOrderState
from twins.battery_twin import BatteryTwin
from twins.zones import ZoneGrid

from ..serve.http.fake_webhooks import MemoryWebhooks
from ..serve.http.fakes import NOW_S, fleet_table

VENDOR_URL = "https://rma.vendor.example/tickets"


def replacement(
    order_id: int = 5,
    battery_id: str = "bat-b",
    kind: WorkOrderKind = WorkOrderKind.BATTERY_REPLACEMENT,
) -> WorkOrder:
    return WorkOrder(
        id=order_id, kind=kind, state=WorkOrderState.PLANNED, vehicle_id="veh-b",
        battery_id=battery_id, lat=52.52, lon=13.40, priority=90.0, value=40.0,
        created_at_s=NOW_S, technician_id=None, updated_at_s=NOW_S,
    )  # fmt: skip


def twin_dict(battery_id: str = "bat-b") -> dict[str, Any]:
    """The snapshot dict of a real twin (what GET /api/v1/batteries/{id} is made of)."""
    table = fleet_table()
    return BatteryTwin(table, table.index[battery_id], ZoneGrid()).snapshot().to_dict()


def hot_alert(
    battery_id: str | None = "bat-b", severity: AlertSeverity = AlertSeverity.CRITICAL
) -> Alert:
    return Alert(
        key=f"pack_overtemp:{battery_id}", kind="pack_overtemp", category=AlertCategory.HEALTH,
        severity=severity, state=AlertState.FIRING, summary="pack at 80.0 °C (limit 60.0 °C)",
        source="twins", started_at_s=NOW_S, last_active_at_s=NOW_S, id=3, battery_id=battery_id,
        evidence={"temp_c": 80.0, "limit_c": 60.0, "model": float("nan")}, fired_at_s=NOW_S,
    )  # fmt: skip


# ---------------------------------------------------------------------- build_ticket
def test_the_ticket_carries_pack_data_evidence_and_warranty_history() -> None:
    """From a real snapshot: ids, pack data, the alerts' evidence and the usage history; NaN
    is null, and the whole ticket is strict JSON."""
    twin = twin_dict()
    ticket = build_ticket(replacement(), twin, [hot_alert()])
    json.dumps(ticket, allow_nan=False)
    assert (
        ticket["work_order_id"] == 5
        and ticket["battery_id"] == "bat-b"
        and ticket["vehicle_id"] == "veh-b"
    )
    pack = ticket["pack"]
    assert pack["rated_capacity_ah"] == twin["rated_capacity_ah"]
    assert set(pack) >= {"capacity_est_ah", "soh_model_pct", "soh_pct_est", "resistance_est_ohm"}
    (evidence,) = ticket["failure_evidence"]["alerts"]
    assert evidence["kind"] == "pack_overtemp" and evidence["summary"].startswith("pack at 80.0")
    assert evidence["evidence"] == {"temp_c": 80.0, "limit_c": 60.0, "model": None}
    assert ticket["failure_evidence"]["anomaly_flags"] == twin["anomaly_flags"]
    history = ticket["history"]
    assert history["equivalent_full_cycles"] == twin["efc"]
    assert history["ah_throughput_ah"] == pytest.approx(
        twin["ah_discharged_ah"] + twin["ah_charged_ah"]
    )
    assert history["time_hot_h"] == pytest.approx(twin["time_hot_s"] / 3600.0)
    assert history["max_temp_c"] == twin["max_temp_c"] == 50.0
    assert history["dod_histogram"] == twin["dod_histogram"]
    # The snapshot has no first-seen time: age is unknown, not made up.
    assert history["first_seen_s"] is None and history["age_days"] is None


def test_age_comes_from_the_first_seen_time_when_the_twin_has_one() -> None:
    """A twin dict with first_ts gives first_seen_s and age_days up to its newest sample."""
    twin = twin_dict() | {"first_ts": twin_dict()["last_ts"] - 10 * 86_400.0}
    history = build_ticket(replacement(), twin, [])["history"]
    assert history["age_days"] == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("order", "twin_id", "alerts", "message"),
    [
        (
            replacement(kind=WorkOrderKind.BATTERY_SWAP),
            "bat-b",
            [],
            "got work order 5 of kind battery_swap",
        ),
        (replacement(), "bat-a", [], "twin of battery 'bat-b'.*got one of 'bat-a'"),
        (replacement(), "bat-b", [hot_alert("bat-z")], "about 'bat-z'"),
    ],
)
def test_build_ticket_refuses_mismatches(
    order: WorkOrder, twin_id: str, alerts: list[Alert], message: str
) -> None:
    """Only replacements; the twin and every alert must be about the order's battery."""
    with pytest.raises(ValueError, match=message):
        build_ticket(order, twin_dict(twin_id), alerts)


def test_fleet_wide_alerts_may_explain_a_replacement() -> None:
    """An alert naming no battery is accepted as evidence."""
    ticket = build_ticket(replacement(), twin_dict(), [hot_alert(None)])
    assert len(ticket["failure_evidence"]["alerts"]) == 1


# ---------------------------------------------------------------------- parse_reply
def test_parse_reply_reads_the_three_statuses() -> None:
    """accepted, rejected and rma (with its number) parse; note and number are optional."""
    assert parse_reply({"status": "accepted"}) == (VendorTicketStatus.ACCEPTED, None, None)
    assert parse_reply({"status": "rejected", "note": "out of warranty"}) == (
        VendorTicketStatus.REJECTED, None, "out of warranty",
    )  # fmt: skip
    assert parse_reply({"status": "rma", "rma_number": "RMA-7781", "note": "ship to Hamburg"}) == (
        VendorTicketStatus.RMA, "RMA-7781", "ship to Hamburg",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"status": "rma"}, "rma_number with status 'rma'"),
        (
            {"status": "sent"},
            "status: Input should be 'accepted', 'rejected' or 'rma' \\(got 'sent'\\)",
        ),
        ({"status": "accepted", "extra": 1}, "extra: Extra inputs are not permitted"),
        ({}, "status: Field required"),
        ({"status": "rma", "rma_number": "has space"}, "rma_number"),
        (["accepted"], "JSON object"),
    ],
)
def test_parse_reply_refuses_bad_replies(body: Any, message: str) -> None:
    """Missing or unknown status, an rma without number, unknown fields and non-objects
    raise InvalidVendorReply naming the field and what came."""
    with pytest.raises(InvalidVendorReply, match=message):
        parse_reply(body)


# ---------------------------------------------------------------------- opening and replies
class Clock:
    t = NOW_S

    def __call__(self) -> float:
        return self.t


def vendor_setup(
    answer: bytes = b"", status: int = 200
) -> tuple[MemoryWebhooks, WebhookDispatcher, VendorTickets, list[httpx.Request]]:
    store = MemoryWebhooks(orders={5: replacement()})
    secret = new_secret()
    store.add(VENDOR_URL, secret, event_types=frozenset({"vendor.ticket"}))
    store.add("https://alerts.example.com/", secret, event_types=frozenset({"alert.firing"}))
    seen: list[httpx.Request] = []
    clock = Clock()

    async def vendor(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        verify(secret, dict(request.headers), request.content, now_s=clock())
        return httpx.Response(status, content=answer)

    async def public(host: str, port: int) -> list[str]:
        return ["203.0.114.1"]

    tickets = VendorTickets(store, None, now=clock)  # type: ignore[arg-type]
    dispatcher = WebhookDispatcher(
        store, UrlPolicy(), now=clock, transport=httpx.MockTransport(vendor), resolve=public,
        rng=random.Random(3), on_success=tickets.on_response,
    )  # fmt: skip
    tickets.dispatcher = dispatcher
    return store, dispatcher, tickets, seen


async def test_a_ticket_is_opened_once_however_often_asked() -> None:
    """The first ask records the ticket and queues one vendor.ticket delivery under its
    msg_id (only to the vendor's subscription); a second ask changes nothing."""
    store, _, tickets, _ = vendor_setup()
    ticket, queued = await tickets.open(replacement(), twin_dict(), [hot_alert()])
    assert queued == 1 and ticket.status is VendorTicketStatus.SENT and ticket.battery_id == "bat-b"
    again, queued_again = await tickets.open(replacement(), twin_dict(), [hot_alert()])
    assert again == ticket and queued_again == 0
    (delivery,) = store.rows.values()
    assert delivery.event_type == "vendor.ticket" and delivery.msg_id == ticket.msg_id
    assert delivery.payload["work_order_id"] == 5 and delivery.subscription_id == 1


async def test_a_ticket_nobody_receives_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """With no vendor subscription the ticket is recorded and a warning says nobody was told."""
    store = MemoryWebhooks(orders={5: replacement()})
    tickets = VendorTickets(store, WebhookDispatcher(store))
    with caplog.at_level(logging.WARNING, logger="alerts.vendor_tickets"):
        ticket, queued = await tickets.open(replacement(), twin_dict(), [])
    assert queued == 0 and store.tickets[5] == ticket
    assert "no vendor was told" in caplog.text


async def test_a_synchronous_reply_is_recorded_at_once() -> None:
    """A 2xx whose body is a valid reply updates the ticket and notes it on the order,
    attributed to the vendor's subscription."""
    answer = json.dumps({"status": "rma", "rma_number": "RMA-1", "note": "send it back"}).encode()
    store, dispatcher, tickets, seen = vendor_setup(answer)
    await tickets.open(replacement(), twin_dict(), [hot_alert()])
    async with dispatcher:
        assert await dispatcher.run_due() == 1
    assert json.loads(seen[0].content)["data"]["battery_id"] == "bat-b"
    ticket = store.tickets[5]
    assert (
        ticket.status is VendorTicketStatus.RMA
        and ticket.rma_number == "RMA-1"
        and ticket.reply_note == "send it back"
    )
    assert store.notes == [
        {
            "work_order_id": 5,
            "actor": "vendor (webhook subscription 1)",
            "status": "rma",
            "note": "send it back",
        }
    ]


@pytest.mark.parametrize("answer", [b"", b"OK", b'{"received": true}', b'{"status": "maybe"}'])
async def test_an_answer_that_is_no_reply_only_acknowledges(answer: bytes) -> None:
    """An empty, non-JSON, other-JSON or invalid reply leaves the ticket sent (the vendor
    may reply later through the API); the delivery still succeeded."""
    store, dispatcher, tickets, _ = vendor_setup(answer)
    await tickets.open(replacement(), twin_dict(), [])
    async with dispatcher:
        await dispatcher.run_due()
    assert store.tickets[5].status is VendorTicketStatus.SENT and store.notes == []
    assert store.rows[1].state is DeliveryState.SUCCEEDED
