"""Fuzz harnesses for pyfacelayers (optional tooling, not part of the package).

Each ``fuzz_<target>.py`` module defines ``one_input(data: bytes)`` which decodes the
bytes, feeds them to one family of entry points and lets through only the exception
types documented for it (``expected.py``). ``run.py`` drives them, with atheris when it
is installed (coverage-guided) or with the built-in mutator (``mutate.py``).
"""
