"""opendisco.ingest."""
