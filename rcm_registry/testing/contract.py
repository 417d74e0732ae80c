"""The base of the contract test classes: which component a subclass tests, and how pytest collects it.

A contract class holds the checks every component of one kind must pass. A test module subclasses
it once per component, naming the component (``name = "lognormal"``, optionally ``config = {...}``)
or building it (``def make(self, **overrides)``); pytest then runs every inherited ``test_*`` method
for that component.

Collection: pytest collects classes whose name starts with ``Test`` and whose ``__test__`` attribute
is true. The contract classes set ``__test__ = False``, so importing one into a test module (under
any name) runs nothing by itself; each subclass gets ``__test__ = True`` unless its name ends in
``Contract`` too (an intermediate base a plugin adds checks to) or it sets ``__test__`` itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

import rcm_registry as rr


class ComponentContract:
    """Checks that hold for every component of :attr:`kind`; subclass once per component."""

    __test__: ClassVar[bool] = False

    #: The component kind the checks are for (set by each contract class).
    kind: ClassVar[str]
    #: The registered component to test; leave None and override :meth:`make` to build it another way.
    name: ClassVar[str | None] = None
    #: Its recipe config (``{use: name, ...}`` without ``use``); the checks' overrides go on top.
    config: ClassVar[Mapping[str, Any]] = {}
    #: Capabilities the component declares (``Component.provides``); None: read from the registry by ``name``.
    provides: ClassVar[frozenset[str] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__test__" not in cls.__dict__:
            cls.__test__ = not cls.__name__.endswith("Contract")

    def make(self, **overrides: Any) -> Any:
        """The component under test, built from :attr:`config` with ``overrides`` on top.

        A subclass that overrides this should pass ``overrides`` on to the config: some checks build
        variants (a loss with ``reduction: sum``).
        """
        if self.name is None:
            raise NotImplementedError(
                f"{type(self).__name__}: set `name` to a registered {self.kind} or override make()"
            )
        return rr.registry().build(self.kind, self.name, **{**self.config, **overrides})

    def capabilities(self) -> frozenset[str]:
        """:attr:`provides`, or what the registered component ``name`` declares."""
        if self.provides is not None:
            return frozenset(self.provides)
        if self.name is None:
            return frozenset()
        return rr.registry().get(self.kind, self.name).provides

    def built_config(self) -> Any:
        """The component's validated config: the built object's ``config`` attribute, else (for an object
        without one) the registry's validation of :attr:`config` for ``name``; None if neither exists."""
        config = getattr(self.make(), "config", None)
        if config is None and self.name is not None:
            config = rr.registry().config(self.kind, self.name, **self.config)
        return config

    def config_field(self, field: str) -> bool:
        """Whether the component's config (an attrs class) has ``field``."""
        config = self.built_config()
        return config is not None and attrs.has(type(config)) and field in attrs.fields_dict(type(config))
