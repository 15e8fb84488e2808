-- Billing queues: Stripe events are stored when they arrive and applied by the billing worker
-- (never while a request holds a connection waiting on Stripe); a deleted organisation's Stripe
-- subscriptions are cancelled from a queue that survives Stripe being unreachable; Checkout is
-- started once at a time; control planes above the plan's limit are held with a reason.

-- An event row now means "received and verified"; `applied_at` says it took effect.
alter table stripe_events
    add column payload jsonb,
    add column applied_at timestamptz,
    add column attempts integer not null default 0,
    add column next_attempt_at timestamptz not null default now(),
    add column last_error text,
    -- Set when the event could not be acted on as it asked (e.g. it names a subscription Stripe
    -- does not have); it is acknowledged, not retried.
    add column warning text;
update stripe_events set applied_at = processed_at;
create index stripe_events_pending_idx on stripe_events (next_attempt_at) where applied_at is null;

-- The Stripe customers of deleted organisations: every live subscription of theirs is cancelled
-- (at once, without proration) by the billing worker, retried until Stripe confirms. Deliberately
-- no foreign key: the organisation is gone. Re-armed when an event shows a live subscription.
create table billing_cancellations (
    stripe_customer_id text primary key,
    org_id uuid not null,
    org_slug text not null,
    requested_at timestamptz not null default now(),
    next_attempt_at timestamptz not null default now(),
    attempts integer not null default 0,
    last_error text,
    -- Null while something is left to cancel.
    done_at timestamptz
);
create index billing_cancellations_pending_idx on billing_cancellations (next_attempt_at)
    where done_at is null;

alter table billing_accounts
    -- When the Stripe read the stored state comes from started: an older read never overwrites
    -- a newer one.
    add column stripe_read_at timestamptz,
    -- The one open Checkout session (a second Checkout is refused while it is open).
    add column checkout_session_id text,
    add column checkout_plan text,
    add column checkout_url text,
    add column checkout_expires_at timestamptz;

-- Why billing holds a control plane: 'past_due' (unpaid past the grace period) or 'over_limit'
-- (beyond the plan's control-plane limit; the newest are held). Null with a hold: 'past_due'.
alter table control_planes add column billing_hold_reason text;
