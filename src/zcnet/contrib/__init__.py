"""Integrations of zcnet with other engines (for example the Dask comm backend).

Each integration lives in its own subpackage and imports its engine only when that subpackage is
imported, so ``import zcnet`` never pulls in Dask.
"""
