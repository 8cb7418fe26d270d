"""A module that fails while it is imported, with a message of two lines."""

raise RuntimeError("the plugin's configuration is missing\nsee its README")
