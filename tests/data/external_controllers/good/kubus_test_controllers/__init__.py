"""Controllers of a distribution other than kubus, for the entry-point tests."""
