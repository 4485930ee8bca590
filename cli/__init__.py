"""opendisco.cli."""
