"""Internals of :mod:`tiercache.local`: binary discovery, process handling, Redis and Postgres.

Split out so each piece stays small; only :mod:`tiercache.local` is public.
"""
