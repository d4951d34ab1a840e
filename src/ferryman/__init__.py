"""Ferryman: a sync daemon for tickets, contacts and invoices.

The public surface for connector authors is what the ``__all__`` of these modules declare:
:mod:`ferryman.connector`, :mod:`ferryman.records`, :mod:`ferryman.errors`,
:mod:`ferryman.api`, :mod:`ferryman.config`, :mod:`ferryman.cursor`,
:mod:`ferryman.timeutil`, :mod:`ferryman.http` (with ``http.auth``, ``http.codecs`` and
``http.pagination``), :mod:`ferryman.sdk.readloop`, :mod:`ferryman.sandbox` and
:mod:`ferryman.testing` (``docs/connectors.md`` is the guide). ``tests/test_architecture.py``
holds that list; everything else is internal.
"""

__version__ = "0.1.0"
