-- Upgrade the lnproxy store from schema version 1 to 2: add webhooks.
-- lnproxy.store runs this inside one transaction and checks the version
-- afterwards. The CREATE TABLE text must stay identical to v2.sql.

CREATE TABLE webhooks
(
 node_id TEXT NOT NULL,
 webhook_id TEXT NOT NULL,
 url TEXT NOT NULL,
 created REAL NOT NULL,
 PRIMARY KEY (node_id, webhook_id)
);

UPDATE version SET version = 2;
