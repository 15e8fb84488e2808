-- Billing: each organisation's Stripe customer and subscription state, the Stripe events already
-- processed, control planes held for non-payment, and metered usage.

create table billing_accounts (
    org_id uuid primary key references organizations (id) on delete cascade,
    stripe_customer_id text unique,
    -- The subscription the plan comes from, as last read from Stripe.
    subscription_id text,
    subscription_status text,
    price_id text,
    -- The plan that price maps to; null: the default plan.
    plan text,
    -- Set when the subscription fell past due; control planes are held after the grace period.
    past_due_since timestamptz,
    -- Object-seconds measured but not yet reported (less than one object-hour).
    usage_carry_seconds bigint not null default 0,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

-- Every Stripe event whose effect was applied, written in the same transaction as the effect.
create table stripe_events (
    id text primary key,
    type text not null,
    created timestamptz not null,
    processed_at timestamptz not null default now()
);

-- Suspended by billing (not by a person): resumed automatically once the organisation pays.
alter table control_planes add column billing_hold boolean not null default false;

-- One report of usage to Stripe: its id is the idempotency key and the meter event identifier,
-- so a retry after a crash is never counted twice.
create table usage_reports (
    id uuid primary key,
    org_id uuid not null references organizations (id) on delete cascade,
    stripe_customer_id text not null,
    object_hours bigint not null check (object_hours > 0),
    period_start timestamptz not null,
    period_end timestamptz not null,
    created_at timestamptz not null default now(),
    reported_at timestamptz,
    attempts integer not null default 0,
    last_error text
);
create index usage_reports_pending_idx on usage_reports (created_at) where reported_at is null;

-- Object counts read from control planes; each sample covers the seconds since the one before.
create table usage_samples (
    id bigserial primary key,
    org_id uuid not null references organizations (id) on delete cascade,
    control_plane_id uuid not null references control_planes (id) on delete cascade,
    sampled_at timestamptz not null,
    objects integer not null check (objects >= 0),
    object_seconds bigint not null check (object_seconds >= 0),
    -- Set in the transaction that adds the sample to a report (a batch).
    batched boolean not null default false
);
create index usage_samples_open_idx on usage_samples (org_id) where not batched;
create index usage_samples_cp_idx on usage_samples (control_plane_id, sampled_at desc);
