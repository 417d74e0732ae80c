"""Data for the tests, not tests: the example plugin's own tests run against the installed plugin, from
tests/rcm_registry/test_plugin_distribution.py (here the plugin is not installed)."""

collect_ignore = ["example_plugin"]
