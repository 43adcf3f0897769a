-- Sample data for the events database of the pg-source service (run once, when the data
-- volume is empty). Enough rows and objects for the backups to be worth restoring: tables
-- with foreign keys, an index, a sequence, a view, and a second schema.
CREATE TABLE users (
    id         bigserial PRIMARY KEY,
    email      text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE events (
    id         bigserial PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id),
    kind       text NOT NULL,
    payload    jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_user_created ON events (user_id, created_at);

CREATE VIEW events_per_kind AS SELECT kind, count(*) AS n FROM events GROUP BY kind;

CREATE SCHEMA billing;
CREATE TABLE billing.invoices (
    id      bigserial PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users (id),
    amount  numeric(12, 2) NOT NULL
);

INSERT INTO users (email)
SELECT format('user%s@example.com', g) FROM generate_series(1, 1000) AS g;

INSERT INTO events (user_id, kind, payload)
SELECT 1 + (g % 1000),
       (ARRAY['signup', 'login', 'purchase', 'logout'])[1 + g % 4],
       jsonb_build_object('n', g, 'note', repeat('x', g % 50))
FROM generate_series(1, 50000) AS g;

INSERT INTO billing.invoices (user_id, amount)
SELECT 1 + (g % 1000), round((g % 997) * 1.37, 2) FROM generate_series(1, 5000) AS g;
