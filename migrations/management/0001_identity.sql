-- People, the identities that sign them in, and their browser sessions.
create table users (
    id uuid primary key,
    email text not null,
    email_verified boolean not null default false,
    display_name text,
    created_at timestamptz not null default now()
);

create table identities (
    issuer text not null,
    subject text not null,
    user_id uuid not null references users (id) on delete cascade,
    email text,
    created_at timestamptz not null default now(),
    last_sign_in_at timestamptz not null default now(),
    primary key (issuer, subject)
);
create index identities_user_idx on identities (user_id);

-- Only a SHA-256 of the session id is stored; the id itself lives in the browser's cookie.
create table sessions (
    id_hash bytea primary key,
    user_id uuid not null references users (id) on delete cascade,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    ip text,
    user_agent text
);
create index sessions_user_idx on sessions (user_id);

-- An OpenID Connect sign-in in flight: single use, keyed by a hash of its `state`.
create table oidc_logins (
    state_hash bytea primary key,
    provider text not null,
    pkce_verifier text not null,
    nonce text not null,
    return_to text not null,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null
);
