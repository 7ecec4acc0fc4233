"""Dependency checks for the app's client and server: lockfiles, registry, advisories, Node.js."""
