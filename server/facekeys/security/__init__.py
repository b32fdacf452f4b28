"""Security of the key pool: credentials and roles, signed reveal grants, a tamper-evident audit log,
the per-deployment key transform, and encryption at rest with per-identity data keys."""
