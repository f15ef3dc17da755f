"""Jobs that write files (merge, and later average, export, stats): plain generators of `Event`s.

torch is imported inside the functions that need it, never at import time of this package.
"""
