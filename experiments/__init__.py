"""opendisco.experiments: online experiments in a two-sided marketplace.

Experiments as data (stored in MongoDB), assignment as a pure function, interference-aware
designs, analysis, and a seeded marketplace simulator. It sits above ``serving`` (its parts are
added to a ``Discovery`` by the API and the CLI) and beside ``eval``.
"""

__all__: list[str] = []
