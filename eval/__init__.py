"""opendisco.eval."""
