"""A thin, typed mirror of the kernel's zero-copy interface.

Constants Python's ``socket`` module lacks, struct layouts with size and offset checks, sockopt
wrappers and error-queue parsing. Functions here raise plain ``OSError``; translation into
:mod:`zcnet.errors` happens in the I/O layers above.
"""
