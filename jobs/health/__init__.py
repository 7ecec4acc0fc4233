"""`health`: HTTP probes with alert-once state, and the `uptime` command."""
