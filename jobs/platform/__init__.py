"""The hosting platform's own notices: its status page."""
