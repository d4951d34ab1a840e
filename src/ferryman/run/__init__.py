"""A run, piece by piece: what the engine (:mod:`ferryman.engine`) composes.

- :mod:`ferryman.run.delivery`: one page's planned actions written to one target, with
  intents, fencing, bounded concurrency, dead letters and the record history.
"""
