"""Built-in LargeForge plugins."""
