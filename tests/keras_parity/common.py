"""Helpers for the ported Keras tests."""
import asyncio


def run(coro):
    """Await a fit / evaluate / predict from a synchronous Keras-style test."""
    return asyncio.run(coro)
