-- Cluster mode's shared event log (README, "Cluster mode"). Applied at start-up by every
-- node (sqlx migrations, recorded in inferno._sqlx_migrations, beside apalis's own).
--
-- `events` holds each event's stored bytes exactly as the embedded log stores them, so
-- every node verifies the chain and builds the Merkle tree from them itself. Seq and the
-- chain are assigned while the single `log_head` row is locked FOR UPDATE, which
-- serializes appenders across nodes; one transaction per group of appends.

CREATE TABLE inferno.log_head (
    id   smallint PRIMARY KEY CHECK (id = 1),
    seq  bigint   NOT NULL CHECK (seq >= 0),
    hash text     NOT NULL
);
INSERT INTO inferno.log_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE inferno.events (
    seq    bigint PRIMARY KEY CHECK (seq > 0),
    stored bytea  NOT NULL,
    -- The node that appended it (`[cluster] node_id`); not part of the hash.
    node   text   NOT NULL
);

-- Writes to side keyspaces (password hashes, email addresses, job payloads and results)
-- committed with an append: data that never enters the log, changed exactly when its
-- events commit. `seq` is the append's first event.
CREATE TABLE inferno.side_writes (
    seq      bigint  NOT NULL,
    ord      integer NOT NULL,
    keyspace text    NOT NULL,
    key      bytea   NOT NULL,
    value    bytea,
    PRIMARY KEY (seq, ord)
);
