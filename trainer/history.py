"""`History` lives with the callbacks (`callbacks.history`), as in Keras; re-exported here."""
from callbacks.history import History

__all__ = ["History"]
