-- Worker leases are short and renewed while the work runs, held by a named instance (a
-- management-plane process), so a surviving or restarted instance takes over a dead one's work
-- within seconds instead of waiting out a long lock.
alter table control_planes add column locked_by uuid;
