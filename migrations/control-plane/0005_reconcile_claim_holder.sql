-- A reconcile claim is short, renewed while its reconcile runs, and held by a named process:
-- only the holder renews it, so a claim outlives a dead holder by seconds at most.
alter table reconcile_queue add column claimed_by uuid;
