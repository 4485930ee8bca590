"""opendisco.queries."""
