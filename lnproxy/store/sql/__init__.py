"""SQL files of the store implementations, shipped as package data.

``sqlite/vN.sql`` is the full schema of version N for a fresh database and
``sqlite/upgrade-to-vN.sql`` the step from version N-1 (see
:mod:`lnproxy.store.schema`). Another implementation keeps its own files in
a sibling directory (e.g. ``postgres/``).
"""
