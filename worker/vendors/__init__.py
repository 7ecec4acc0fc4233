"""One module per outside web API, each built on `worker.http`: jobs import these, never each other."""
