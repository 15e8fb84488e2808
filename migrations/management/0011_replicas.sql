-- Several management-plane processes (replicas) on one management database (issue 14).

-- Each process says it is alive every few seconds; one not seen for a while is gone, and what it
-- ran is taken over.
create table management_instances (
    id uuid primary key,
    started_at timestamptz not null default now(),
    seen_at timestamptz not null default now()
);

-- The process runtime runs a control plane as a child of one instance: which, and where it
-- answers, so that every instance's gateway reaches it.
alter table control_planes add column runtime_holder uuid, add column runtime_endpoint text;

-- Forgetting cached control planes covers where they run too.
drop trigger control_planes_cache on control_planes;
create trigger control_planes_cache
    after update of org_id, status, desired, billing_hold, billing_hold_reason, runtime_holder,
        runtime_endpoint or delete
    on control_planes
    for each row execute function notify_cache_change();

-- Live status reaches every instance's subscribers, whichever instance made the change.
create function notify_control_plane_status() returns trigger language plpgsql as $$
begin
    perform pg_notify('qleet_changes', json_build_object(
        'orgId', new.org_id, 'id', new.id, 'status', new.status,
        'statusReason', new.status_reason, 'updatedAt', new.updated_at)::text);
    return null;
end
$$;
create trigger control_planes_status after insert or update of status, status_reason
    on control_planes
    for each row execute function notify_control_plane_status();

-- A usage report is sent by one instance at a time.
alter table usage_reports add column claimed_by uuid, add column claimed_until timestamptz;
