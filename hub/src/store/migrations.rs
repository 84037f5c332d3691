//! Schema migrations, applied in order; `PRAGMA user_version` records how far a database got.
//! Never edit a released migration: add the next one.

pub(super) const MIGRATIONS: &[&str] = &[
    // 1: registry, trust, tokens, audit.
    r#"
    CREATE TABLE models (
        name TEXT PRIMARY KEY,
        created INTEGER NOT NULL
    );
    CREATE TABLE model_versions (
        model TEXT NOT NULL REFERENCES models(name),
        version INTEGER NOT NULL,
        artifact_sha256 TEXT NOT NULL,
        artifact_size INTEGER NOT NULL,
        inputs TEXT NOT NULL,
        outputs TEXT NOT NULL,
        metrics TEXT NOT NULL,
        tags TEXT NOT NULL,
        lineage TEXT NOT NULL,
        created INTEGER NOT NULL,
        retired INTEGER,
        manifest TEXT NOT NULL,
        manifest_expires INTEGER NOT NULL,
        PRIMARY KEY (model, version),
        UNIQUE (model, artifact_sha256)
    );
    CREATE TABLE aliases (
        model TEXT NOT NULL REFERENCES models(name),
        alias TEXT NOT NULL,
        version INTEGER NOT NULL,
        PRIMARY KEY (model, alias)
    );
    CREATE TABLE alias_history (
        id INTEGER PRIMARY KEY,
        model TEXT NOT NULL,
        alias TEXT NOT NULL,
        version INTEGER,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL
    );
    CREATE TABLE roots (
        version INTEGER PRIMARY KEY,
        envelope TEXT NOT NULL
    );
    CREATE TABLE admin_tokens (
        token_sha256 TEXT PRIMARY KEY,
        scope TEXT NOT NULL,
        name TEXT NOT NULL,
        created INTEGER NOT NULL
    );
    CREATE TABLE enrollment_tokens (
        token_sha256 TEXT PRIMARY KEY,
        labels TEXT NOT NULL,
        expires INTEGER NOT NULL,
        used_by TEXT,
        created INTEGER NOT NULL
    );
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    "#,
    // 2: devices and their desired state.
    r#"
    CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        public_key TEXT NOT NULL,
        labels TEXT NOT NULL,
        hardware TEXT NOT NULL,
        agent_version TEXT NOT NULL,
        enrolled_at INTEGER NOT NULL,
        last_seen INTEGER,
        online INTEGER NOT NULL DEFAULT 0,
        serving TEXT NOT NULL DEFAULT '{}',
        last_outcomes TEXT NOT NULL DEFAULT '[]',
        reported_sequence INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE desired_states (
        device_id TEXT PRIMARY KEY REFERENCES devices(id),
        sequence INTEGER NOT NULL,
        models TEXT NOT NULL,
        envelope TEXT NOT NULL
    );
    "#,
    // 3: rollouts: the spec, the frozen target order with each device's previous version,
    // and the controller's state (rewritten after every step).
    r#"
    CREATE TABLE rollouts (
        id TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        version INTEGER NOT NULL,
        spec TEXT NOT NULL,
        targets TEXT NOT NULL,
        state TEXT NOT NULL,
        phase TEXT NOT NULL,
        created INTEGER NOT NULL,
        updated INTEGER NOT NULL
    );
    CREATE INDEX rollouts_by_phase ON rollouts (phase);
    "#,
    // 4: promotion quality gates, one policy per model.
    r#"
    CREATE TABLE quality_policies (
        model TEXT PRIMARY KEY,
        policy TEXT NOT NULL,
        updated INTEGER NOT NULL
    );
    "#,
    // 5: retraining triggers: one rule per model, and every run with its outcome.
    r#"
    CREATE TABLE trigger_rules (
        model TEXT PRIMARY KEY,
        rule TEXT NOT NULL,
        updated INTEGER NOT NULL
    );
    CREATE TABLE trigger_runs (
        id TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        version INTEGER,
        reason TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        fired_at INTEGER NOT NULL,
        updated INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        payload TEXT NOT NULL
    );
    CREATE INDEX trigger_runs_by_model ON trigger_runs (model, fired_at);
    "#,
    // 6: status freshness: the newest (epoch, beat) taken from each device, so a replayed
    // status is refused.
    r#"
    ALTER TABLE devices ADD COLUMN status_epoch INTEGER NOT NULL DEFAULT -1;
    ALTER TABLE devices ADD COLUMN status_beat INTEGER NOT NULL DEFAULT -1;
    "#,
    // 7: the device certificates the hub's CA issued, by fingerprint: who a TLS client is,
    // and whether its certificate was revoked.
    r#"
    CREATE TABLE device_certificates (
        sha256 TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        issued_at INTEGER NOT NULL,
        expires INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE INDEX device_certificates_by_device ON device_certificates (device_id);
    "#,
    // 8: claim tokens (a use count) and revocation of enrollment tokens.
    r#"
    ALTER TABLE enrollment_tokens ADD COLUMN uses_allowed INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE enrollment_tokens ADD COLUMN uses INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE enrollment_tokens ADD COLUMN revoked_at INTEGER;
    UPDATE enrollment_tokens SET uses = 1 WHERE used_by IS NOT NULL;
    "#,
    // 9: decommissioned devices: revoked (kept with their history) until removed.
    r#"
    ALTER TABLE devices ADD COLUMN revoked_at INTEGER;
    "#,
    // 10: each device certificate's serial number (hex), which the revocation list names.
    // Certificates issued before have none and are left off the list (they lapse within
    // their lifetime; renewals have serials).
    r#"
    ALTER TABLE device_certificates ADD COLUMN serial TEXT;
    "#,
];
