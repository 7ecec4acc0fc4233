"""Where results go: the structured log (stdout) and Sentry. Both redact secrets first."""
