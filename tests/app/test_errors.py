"""The one tree of runq's errors (runq/app/errors.py): every server-side error is a ``RunqError``, each is
importable from where it was raised before, and the module's documented tree names every class."""

from __future__ import annotations

from runq.app import errors
from runq.protocol.errors import RunqError


def test_every_server_side_error_is_a_runq_error_with_its_code() -> None:
    codes = {name: getattr(errors, name).code for name in errors.__all__ if name != "RunqError"}
    assert all(issubclass(getattr(errors, name), RunqError) for name in errors.__all__)
    assert codes == {"ConfigError": "bad_request", "IllegalTransition": "invalid_state", "NotLeader": "store_error",
                     "SchemaTooNew": "store_error", "StoreError": "store_error", "StoreInUse": "store_error",
                     "TaskMissing": "not_found", "ScheduleError": "bad_request", "ScheduleMissing": "not_found"}


def test_the_store_errors_are_store_errors() -> None:
    for cls in (errors.StoreInUse, errors.SchemaTooNew, errors.NotLeader):
        assert issubclass(cls, errors.StoreError)


def test_each_error_is_still_importable_from_where_it_was() -> None:
    from runq.app.core import IllegalTransition, TaskMissing
    from runq.app.core.queue import TaskMissing as TaskMissing2
    from runq.app.core.states import IllegalTransition as IllegalTransition2
    from runq.app.server import ConfigError
    from runq.app.server.config import ConfigError as ConfigError2
    from runq.app.store import SchemaTooNew, StoreError, StoreInUse
    from runq.app.store.schema import SchemaTooNew as SchemaTooNew2
    from runq.app.store.sqlite import StoreError as StoreError2
    from runq.app.store.sqlite import StoreInUse as StoreInUse2

    assert IllegalTransition is IllegalTransition2 is errors.IllegalTransition
    assert TaskMissing is TaskMissing2 is errors.TaskMissing
    from runq.app.core import ScheduleError, ScheduleMissing
    assert (ScheduleError, ScheduleMissing) == (errors.ScheduleError, errors.ScheduleMissing)
    assert ConfigError is ConfigError2 is errors.ConfigError
    assert SchemaTooNew is SchemaTooNew2 is errors.SchemaTooNew
    assert StoreError is StoreError2 is errors.StoreError
    assert StoreInUse is StoreInUse2 is errors.StoreInUse


def test_the_documented_tree_names_every_class() -> None:
    doc = errors.__doc__ or ""
    for name in errors.__all__:
        assert f" {name} " in doc, name
