-- At most one open work order per battery (contracts.work_orders.OPEN_STATES).
--
-- A planner that restarted with an empty job queue used to create a second order for a
-- battery that already had one; two orders for one battery can send two vans to one vehicle.
-- WorkOrderStore.create now returns the open order instead, and this index makes the
-- database refuse a second one whatever the caller.
--
-- Duplicates written before this migration are closed first, else the index cannot be
-- built. Per battery the order that got furthest stays open (en_route, then assigned, then
-- planned: a technician may be driving to it), the newest among equals; the others are
-- cancelled (allowed from every open state) with an attributed event, like any change.
WITH ranked AS (
    SELECT id, state,
           row_number() OVER (
               PARTITION BY battery_id
               ORDER BY CASE state WHEN 'en_route' THEN 0 WHEN 'assigned' THEN 1 ELSE 2 END, id DESC
           ) AS rank
    FROM work_orders
    WHERE state IN ('planned', 'assigned', 'en_route')
),
cancelled AS (
    UPDATE work_orders wo SET state = 'cancelled', updated_at = now()
    FROM ranked
    WHERE wo.id = ranked.id AND ranked.rank > 1
    RETURNING wo.id, ranked.state AS from_state, wo.technician_id
)
INSERT INTO work_order_events (work_order_id, from_state, to_state, actor, technician_id, note)
SELECT id, from_state, 'cancelled', 'migration 0011', technician_id,
       'duplicate open order for its battery; another one stays open'
FROM cancelled;

CREATE UNIQUE INDEX work_orders_one_open_per_battery ON work_orders (battery_id)
    WHERE state IN ('planned', 'assigned', 'en_route');
