-- The management plane caches who a credential is, members' roles, control-plane records and
-- billing accounts in process (issue 14); these notifications say what to forget, on the same
-- channel as revocations (`qleet_access`), so a change reaches every process within a second.
-- Payloads name a subject, never a secret: `user:<id>`, `cp:<id>`, `org:<id>`.

-- A new membership matters too now (a cached principal's organisations): notify on insert.
drop trigger memberships_access on memberships;
create trigger memberships_access after insert or update of role or delete on memberships
    for each row execute function notify_access_change();

create function notify_cache_change() returns trigger language plpgsql as $$
declare
    subject text;
    row_ record;
begin
    if tg_op = 'DELETE' then
        row_ := old;
    else
        row_ := new;
    end if;
    if tg_table_name = 'users' then
        subject := 'user:' || row_.id;
    elsif tg_table_name = 'control_planes' then
        subject := 'cp:' || row_.id;
    else
        subject := 'org:' || row_.org_id;
    end if;
    perform pg_notify('qleet_access', subject);
    return null;
end
$$;

create trigger users_cache after update of email or delete on users
    for each row execute function notify_cache_change();
-- Not `last_request_at`, which the gateway writes every few seconds.
create trigger control_planes_cache
    after update of org_id, status, desired, billing_hold, billing_hold_reason or delete
    on control_planes
    for each row execute function notify_cache_change();
create trigger billing_accounts_cache after insert or update or delete on billing_accounts
    for each row execute function notify_cache_change();
