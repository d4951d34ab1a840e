"""Ferryman: a sync daemon for tickets, contacts and invoices.

The public surface for connector authors lives in :mod:`ferryman.connector`,
:mod:`ferryman.records` and :mod:`ferryman.errors`; everything else is internal.
"""

__version__ = "0.1.0"
