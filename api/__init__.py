"""opendisco.api."""
