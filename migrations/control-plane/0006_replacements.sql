-- Replacements. A change the cloud cannot make in place (a bucket's region, a database's
-- engine) gives the object a new incarnation, whose resources are named apart from the old
-- ones, and retires what the old incarnation made. A retired resource is deleted by the agent
-- once the new one is Ready and every dependent has re-rolled onto it (each edge records the
-- dependency outputs its dependent last became Ready with), or when the object is deleted.
alter table objects add column incarnation integer not null default 0;
alter table object_edges add column seen_outputs text;
create table retired_resources (
    id uuid primary key,
    -- Kept after the object is gone, as the record of what was made and removed.
    object_id uuid not null,
    incarnation integer not null,
    -- The payload of the agent task that made it: a delete task with it removes it.
    payload jsonb not null,
    input_hash text not null,
    reason text not null,
    retired_at timestamptz not null default now(),
    deleted_at timestamptz
);
create index retired_resources_pending on retired_resources(object_id) where deleted_at is null;
