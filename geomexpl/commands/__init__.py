"""Sub-commands of the ``geomexpl`` CLI (see :mod:`geomexpl.cli`)."""
