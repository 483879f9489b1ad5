"""Python functions served as tasks: the @task decorator and the
``module:function`` specs of ``python -m cfutures.worker``.

A task is found by name, as in the C registry (CF_TASK): the decorator
marks a function with the name it is served under (its own by default) and
records it in this process's registry. The worker serves the functions its
command line names:

    module:function         that function, under its task name
    name=module:function    that function, under `name`
    module                  every @task function defined in that module

Names are 1..255 UTF-8 bytes; names starting with "cf." are reserved for
the tasks every worker provides itself (cf.chunk).
"""

import importlib

from . import _proto

_registry = {}


def task(fn=None, *, name=None):
    """Registers fn as a task, under `name` or its own __name__:

        @cfutures.task
        def square(x):
            return x * x

        @cfutures.task(name="shout")
        def upper(word):
            return word.upper()
    """
    def register(f):
        if not callable(f):
            raise TypeError("@task decorates a function")
        task_name = name if name is not None else f.__name__
        _proto.check_function_name(task_name)
        f.__cf_task_name__ = task_name
        _registry[task_name] = f
        return f

    if fn is not None:
        return register(fn)
    return register


def registered():
    """Every function registered with @task so far: {name: function}."""
    return dict(_registry)


def load(spec):
    """The functions one command-line spec names: {name: function}.
    Raises ValueError with a one-line reason (ImportError for a module that
    cannot be imported)."""
    rename = None
    target = spec
    if "=" in spec.split(":", 1)[0]:
        rename, target = spec.split("=", 1)
    module_name, _, attr = target.partition(":")
    if not module_name:
        raise ValueError(f"{spec!r}: expected module:function, name=module:function or module")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(f"{spec!r}: cannot import {module_name}: {e}") from None
    if not attr:
        if rename:
            raise ValueError(f"{spec!r}: a name renames one function (name=module:function)")
        found = {}
        for value in vars(module).values():
            task_name = getattr(value, "__cf_task_name__", None)
            if task_name is not None and callable(value) \
                    and getattr(value, "__module__", None) == module.__name__:
                found[task_name] = value
        if not found:
            raise ValueError(f"{spec!r}: no @cfutures.task function in {module_name}")
        return found
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{spec!r}: {module_name} has no {attr}") from None
    if not callable(obj):
        raise ValueError(f"{spec!r}: {attr} is not callable")
    task_name = rename or getattr(obj, "__cf_task_name__", None) or attr.rsplit(".", 1)[-1]
    try:
        _proto.check_function_name(task_name)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{spec!r}: {e}") from None
    return {task_name: obj}
