"""Run a contract's checks on one component outside pytest's collection, to see which of them fail."""

from __future__ import annotations

from typing import Any

from rcm_registry.testing import ComponentContract


def failing_checks(contract: type[ComponentContract], **body: Any) -> set[str]:
    """The ``test_*`` methods of ``contract`` that raise for the component ``body`` describes.

    ``body`` holds the subclass's attributes, as a test module would write them (``make``, ``name``,
    ``config``, ...). The contracts' checks take no fixtures, so each is called directly.
    """
    case = type(f"Test{contract.__name__}Case", (contract,), body)()
    failed = set()
    for name in sorted(n for n in dir(case) if n.startswith("test_")):
        try:
            getattr(case, name)()
        except Exception:  # what pytest reports as a failure: an assertion, or an error the check ran into
            failed.add(name)
    return failed


def checks_of(contract: type[ComponentContract]) -> set[str]:
    return {n for n in dir(contract) if n.startswith("test_")}
