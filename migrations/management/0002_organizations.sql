create table organizations (
    id uuid primary key,
    slug text not null unique,
    name text not null,
    created_at timestamptz not null default now()
);

create table memberships (
    org_id uuid not null references organizations (id) on delete cascade,
    user_id uuid not null references users (id) on delete cascade,
    role text not null check (role in ('owner', 'admin', 'member', 'viewer')),
    created_at timestamptz not null default now(),
    primary key (org_id, user_id)
);
create index memberships_user_idx on memberships (user_id);

create table invitations (
    id uuid primary key,
    org_id uuid not null references organizations (id) on delete cascade,
    email text not null,
    role text not null check (role in ('owner', 'admin', 'member', 'viewer')),
    token_hash bytea not null unique,
    invited_by uuid not null references users (id) on delete cascade,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    accepted_at timestamptz,
    accepted_by uuid references users (id) on delete set null,
    revoked_at timestamptz
);
-- One open invitation per address and organisation.
create unique index invitations_open_email_idx on invitations (org_id, lower(email))
    where accepted_at is null and revoked_at is null;

create table api_tokens (
    id uuid primary key,
    org_id uuid not null references organizations (id) on delete cascade,
    name text not null,
    prefix text not null,
    token_hash bytea not null unique,
    role text not null check (role in ('owner', 'admin', 'member', 'viewer')),
    created_by uuid not null references users (id) on delete cascade,
    created_at timestamptz not null default now(),
    expires_at timestamptz,
    last_used_at timestamptz,
    revoked_at timestamptz
);
create index api_tokens_org_idx on api_tokens (org_id);

-- Append-only record of every mutation. No foreign key on org_id: the record of an
-- organisation's deletion outlives the organisation.
create table audit_log (
    id bigserial primary key,
    org_id uuid,
    actor_user_id uuid,
    actor_token_id uuid,
    actor text not null,
    action text not null,
    ip text,
    changes jsonb not null default '{}'::jsonb,
    at timestamptz not null default now()
);
create index audit_log_org_idx on audit_log (org_id, id desc);
