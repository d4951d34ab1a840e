"""The generic ``rest`` connector: an API Ferryman has never heard of, declared in YAML.

Its sandbox simulator (``ferryman sandbox generic``) lives in :mod:`.simulator`.
"""
