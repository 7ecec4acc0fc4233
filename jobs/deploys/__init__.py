"""`deploys`: Render deploys, the last known good one, and the `deploys` and `rollback` commands."""
