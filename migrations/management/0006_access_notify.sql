-- Revocation reaches live connections: whenever a membership, session or API token changes
-- or goes (by any code path, cascades included), tell the management plane's listeners whose
-- access to re-check. The payload names a subject, never a secret: `user:<id>` for memberships
-- and sessions (a membership also bounds the tokens its user created), `token:<id>` for tokens.
create function notify_access_change() returns trigger language plpgsql as $$
declare
    subject text;
begin
    if tg_table_name = 'api_tokens' then
        if tg_op = 'DELETE' then
            subject := 'token:' || old.id;
        else
            subject := 'token:' || new.id;
        end if;
    elsif tg_op = 'DELETE' then
        subject := 'user:' || old.user_id;
    else
        subject := 'user:' || new.user_id;
    end if;
    perform pg_notify('qleet_access', subject);
    return null;
end
$$;

create trigger memberships_access after update of role or delete on memberships
    for each row execute function notify_access_change();
create trigger sessions_access after update of expires_at or delete on sessions
    for each row execute function notify_access_change();
create trigger api_tokens_access after update of revoked_at, expires_at, role or delete on api_tokens
    for each row execute function notify_access_change();
