"""Teachers: the store that files trained teachers under their key (:mod:`.store`), the frozen network(s) a
distillation run reads (:mod:`.ensemble`), and loading the run's teacher (:mod:`.load`).

The API takes a :class:`~kdnas.engine.workspace.Workspace` and the typed ``teacher`` settings
(:class:`~kdnas.config.TeacherConfig`): ``load(ws, settings) -> Teacher``, ``ensure(ws, settings) -> (folder,
card)`` and ``teacher_key(ws, settings)``.
"""

from kdnas.teachers.ensemble import CACHE_MODES, COMBINE, Teacher, freeze, member_configs, weights_sha256
from kdnas.teachers.load import load, load_network, resolve_checkpoint
from kdnas.teachers.store import (
    KIND_KEYS,
    PACKAGED_TEACHERS,
    STORE_FORMAT,
    TeacherStore,
    check_kind_keys,
    ensure,
    packaged_teacher,
    recipe_of,
    teacher_config,
    teacher_key,
)

__all__ = ["CACHE_MODES", "COMBINE", "KIND_KEYS", "PACKAGED_TEACHERS", "STORE_FORMAT", "Teacher", "TeacherStore",
           "check_kind_keys", "ensure", "freeze", "load", "load_network",
           "member_configs", "packaged_teacher", "recipe_of", "resolve_checkpoint", "teacher_config",
           "teacher_key", "weights_sha256"]
