-- Console sessions, one row per sign-in. The cookie holds a random session id; this table holds
-- its SHA-256 (a copy of the table signs nobody in). "Sign out" deletes the row, which ends the
-- session at once on every replica, for every copy of the cookie; a row idle for 8 hours or
-- older than 24 hours is refused and deleted.
CREATE TABLE console_sessions (
    id TEXT PRIMARY KEY,                    -- SHA-256 (hex) of the session id in the cookie
    operator TEXT NOT NULL,                 -- the API key name signed in with
    started_at DOUBLE PRECISION NOT NULL,   -- epoch seconds: the 24 h absolute limit
    seen_at DOUBLE PRECISION NOT NULL       -- epoch seconds, renewed at most once a minute: 8 h idle
);
