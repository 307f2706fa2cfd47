"""Pure logic of zcnet: no sockets, no ctypes, no threads, no clocks (sans-I/O).

Everything here is deterministic and tested with table-driven and property-based tests.
"""
