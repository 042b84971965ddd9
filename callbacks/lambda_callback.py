"""`LambdaCallback`: a callback made of functions, for any hook, sync or async."""
from __future__ import annotations

import difflib

from callbacks.callback import ALL_HOOKS, Callback
from callbacks.callback_list import BATCH_ALIASES


class LambdaCallback(Callback):
    """Build a callback from plain functions, one per hook (`def` or `async def`).

    Args:
        callback_order: where it runs among the callbacks (default 0).
        **hooks: hook name -> function with that hook's arguments, e.g.
            `on_epoch_end=lambda epoch, logs: ...`, `on_compute_update_end=lambda step, update: False`;
            Keras' `on_batch_begin` / `on_batch_end` too. A name starting with `on_` that is no
            hook is refused (a typo would never run); any other keyword becomes an
            attribute, as in Keras.

    Example:
        ```python
        async def report(epoch, logs):
            await queue.put((epoch, logs["loss"]))

        await program.fit(x, y, epochs=3, callbacks=[LambdaCallback(on_epoch_end=report)])
        ```
    """

    def __init__(self, callback_order: int = 0, **hooks):
        super().__init__()
        self.callback_order = callback_order
        known = ALL_HOOKS + tuple(BATCH_ALIASES.values())
        for name, fn in hooks.items():
            if name not in known:
                if not name.startswith("on_"):
                    setattr(self, name, fn)  # as Keras: any other keyword becomes an attribute
                    continue
                close = difflib.get_close_matches(name, known, n=1)  # a misspelt hook would never run
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise TypeError(f"LambdaCallback got {name!r}, which is not a hook.{hint}")
            if not callable(fn):
                raise TypeError(f"LambdaCallback({name}=...) must be a function; got {fn!r}.")
            # Set on the instance: CallbackList sees it as overridden, the rest stay free.
            setattr(self, name, fn)
        self._names = sorted(hooks)

    def _state_key_args(self) -> str:
        return f"[{','.join(self._names)}]"
