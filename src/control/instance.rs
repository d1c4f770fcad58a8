//! This process's name among replicas, read once from the environment: every layer that names
//! the process (the access log's records, the Redis heartbeat, the admin answers, telemetry)
//! reads it here, a leaf, so that naming the process ties no module to another.

/// This process's name among replicas: `KEYWARD_INSTANCE`, else `HOSTNAME` (a pod's name),
/// else `keyward`.
pub fn instance() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        ["KEYWARD_INSTANCE", "HOSTNAME"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "keyward".into())
    })
}
