-- Tenant agents: one-time registration tokens and the agents they made. Secrets are stored
-- only as SHA-256 hashes.

create table agent_registrations (
    id uuid primary key,
    token_hash bytea not null unique,
    -- Who asked for it: "user:<id>", "token:<id>" or "admin".
    created_by text not null,
    -- The plan's agent limit when the token was issued (null: none).
    max_agents int,
    expires_at timestamptz not null,
    used_at timestamptz,
    revoked_at timestamptz,
    created_at timestamptz not null default now()
);

create table agents (
    id uuid primary key,
    name text not null,
    credential_hash bytea not null,
    version text not null,
    registration_id uuid not null unique references agent_registrations(id),
    registered_at timestamptz not null default now(),
    last_seen_at timestamptz,
    running int not null default 0,
    revoked_at timestamptz
);
