-- Objects, their dependency edges, the reconcile outbox, events and agent tasks.

-- Every declared thing (an AWS account, a bucket, a workload, a composition, an instance of a
-- composition...) is one row. `spec` is what the tenant declared, already validated for its kind;
-- `status` and `outputs` are what the control plane and the agent observed.
create table objects (
    id uuid primary key,
    kind text not null,
    name text not null,
    spec jsonb not null,
    -- {"phase": "...", "message": "..."}
    status jsonb not null default '{"phase": "Pending"}',
    outputs jsonb not null default '{}',
    -- The spec with every reference replaced by the referenced output (null until resolvable).
    rendered jsonb,
    generation bigint not null default 1,
    observed_generation bigint not null default 0,
    conditions jsonb not null default '[]',
    -- The composition instance this object was expanded from (deleted with it).
    owner_id uuid references objects(id),
    deletion_requested_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    unique (kind, name)
);
create index objects_owner on objects(owner_id) where owner_id is not null;

-- dependent uses an output of (or otherwise needs) dependency.
create table object_edges (
    dependent uuid not null references objects(id) on delete cascade,
    dependency uuid not null references objects(id),
    primary key (dependent, dependency)
);
create index object_edges_dependency on object_edges(dependency);

-- The outbox: an object needs reconciling. Written in the same transaction as the change that
-- causes it. `seq` grows on every request so a reconcile that started before a newer request
-- does not remove it; `claimed_until` is a worker's lease on the row.
create table reconcile_queue (
    object_id uuid primary key references objects(id) on delete cascade,
    seq bigint not null default 1,
    not_before timestamptz not null default now(),
    claimed_until timestamptz,
    attempts int not null default 0,
    last_error text,
    enqueued_at timestamptz not null default now()
);
create index reconcile_queue_due on reconcile_queue(not_before);

create table object_events (
    id bigserial primary key,
    object_id uuid not null references objects(id) on delete cascade,
    at timestamptz not null default now(),
    type text not null check (type in ('Normal', 'Warning')),
    reason text not null,
    message text not null
);
create index object_events_object on object_events(object_id, id desc);

-- Work that must happen in the customer's account, done by their agent. One task per object,
-- operation and input: `input_hash` covers everything the agent is told, so re-reconciling never
-- queues the same work twice, and new inputs supersede older unfinished tasks.
create table agent_tasks (
    id uuid primary key,
    object_id uuid not null references objects(id) on delete cascade,
    -- e.g. 'ensure', 'delete'
    operation text not null,
    generation bigint not null,
    input_hash text not null,
    payload jsonb not null,
    state text not null default 'queued'
        check (state in ('queued', 'leased', 'succeeded', 'failed', 'superseded')),
    not_before timestamptz not null default now(),
    lease_id uuid,
    lease_holder text,
    lease_expires_at timestamptz,
    attempts int not null default 0,
    outputs jsonb,
    error jsonb,
    created_at timestamptz not null default now(),
    completed_at timestamptz,
    unique (object_id, operation, input_hash)
);
create index agent_tasks_ready on agent_tasks(not_before) where state in ('queued', 'leased');
create index agent_tasks_object on agent_tasks(object_id, created_at desc);
