"""What connector authors build on: the read loop and its guards (:mod:`ferryman.sdk.readloop`).

The package itself exports nothing: authors import from its modules, each of which declares
its ``__all__`` (``tests/test_architecture.py`` holds them).
"""

__all__: list[str] = []
