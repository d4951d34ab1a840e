"""Ferryman's built-in connectors, one package each, registered through the
``ferryman.connectors`` entry-point group like any third-party connector."""
