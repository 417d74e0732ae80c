"""The ``rcm`` commands, one module each.

A command module holds ``NAME`` (the command as typed), ``add_parser(subparsers)`` (its arguments, help and
example) and the function that runs it; what several share is in ``_shared``. ``rcm_registry.cli`` lists the
modules and dispatches. Building a parser imports no torch: a command imports its heavy dependencies inside
its function, so ``rcm list`` or ``rcm --help`` pays only for what it uses.
"""
