-- The registry of tenant control planes and the history of their states.
create table control_planes (
    id uuid primary key,
    org_id uuid not null references organizations (id) on delete cascade,
    name text not null,
    region text,
    status text not null default 'pending' check (status in
        ('pending', 'provisioning', 'ready', 'hibernated', 'suspended', 'deleting', 'deleted', 'failed')),
    status_reason text,
    -- What the organisation asked for; the lifecycle worker drives `status` towards it.
    desired text not null default 'running' check (desired in ('running', 'suspended', 'deleted')),
    db_name text not null unique,
    db_role text not null unique,
    -- XChaCha20-Poly1305(nonce || ciphertext) of the tenant role's password.
    db_password_enc bytea not null,
    version text not null,
    -- The worker's lease: one worker at a time drives a control plane.
    locked_until timestamptz,
    -- When the worker should next look (backoff after errors).
    next_attempt_at timestamptz not null default now(),
    attempts integer not null default 0,
    last_request_at timestamptz,
    delete_after timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
create unique index control_planes_org_name_idx on control_planes (org_id, lower(name))
    where status <> 'deleted';
create index control_planes_work_idx on control_planes (next_attempt_at)
    where status not in ('deleted', 'failed');

create table control_plane_events (
    id bigserial primary key,
    control_plane_id uuid not null references control_planes (id) on delete cascade,
    at timestamptz not null default now(),
    from_status text,
    to_status text not null,
    message text not null
);
create index control_plane_events_cp_idx on control_plane_events (control_plane_id, id desc);
