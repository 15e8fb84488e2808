-- A tenant control plane's own database. Objects, tasks and agents arrive with their issues.

-- Facts about this database, e.g. which control plane owns it ('control_plane_id').
create table control_plane_meta (
    key text primary key,
    value jsonb not null,
    created_at timestamptz not null default now()
);
