"""The recurring reviews: the weekly digest, the docs review and the security review."""
