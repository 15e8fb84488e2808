-- Where tenant databases live (issue 14). A set of PostgreSQL servers, each with the URL of a
-- role there that may create roles and databases, and how many control planes it takes. A new
-- control plane's database goes to the least loaded server with room that is not draining or
-- refusing connections, and stays there. With no server registered, tenant databases go to the
-- management database's own server, as before.
create table database_servers (
    id uuid primary key,
    name text not null unique check (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    -- XChaCha20-Poly1305(nonce || ciphertext) of the admin URL.
    admin_url_enc bytea not null,
    capacity integer not null check (capacity >= 0),
    -- No new control planes; those already there stay.
    draining boolean not null default false,
    -- The server refused a connection for want of room (too many connections): no new
    -- control planes before this time.
    unavailable_until timestamptz,
    unavailable_reason text,
    created_at timestamptz not null default now()
);

-- Null: the management database's server (also every control plane made before this).
alter table control_planes add column server_id uuid references database_servers (id);
create index control_planes_server_idx on control_planes (server_id) where status <> 'deleted';
