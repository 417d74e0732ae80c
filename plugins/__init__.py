"""Built-in components of rcm-registry, grouped by area.

Each area package exposes one ``rcm_components`` hook implementation that lists its components
explicitly; the areas are registered through the ``rcm_registry`` entry-point group like any
third-party plugin (see pyproject.toml).
"""
