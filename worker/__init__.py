"""opskeeper's daemon: schedule, runner, ledger, reporting and the command line."""
