"""Not a copy: stands in for verl.utils.rollout_trace.rollout_trace_op, which (volcengine/verl @
b178a3cd56f58b2d502255daba591e92833930a7, verl/utils/rollout_trace.py) awaits the wrapped method
unchanged when no trace backend (weave, mlflow) is configured, as here."""
import functools


def rollout_trace_op(func):
    @functools.wraps(func)
    async def async_wrapper(self, *args, **kwargs):
        return await func(self, *args, **kwargs)

    return async_wrapper
