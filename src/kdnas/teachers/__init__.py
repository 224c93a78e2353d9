"""Teachers: the store that files trained teachers under their key (:mod:`.store`), the frozen member network(s)
a distillation run reads and how an ensemble combines them (:mod:`.ensemble`), and loading the run's teacher
from the store, a checkpoint or as an ensemble (:mod:`.load`)."""

from kdnas.teachers.ensemble import CACHE_MODES, COMBINE, Teacher, freeze, member_configs, weights_sha256
from kdnas.teachers.load import build_teacher, load_network, load_teacher, resolve_checkpoint
from kdnas.teachers.store import (
    KIND_KEYS,
    PACKAGED_TEACHERS,
    STORE_FORMAT,
    TeacherStore,
    check_kind_keys,
    ensure_teacher,
    packaged_teacher,
    recipe_of,
    teacher_key,
)

__all__ = ["CACHE_MODES", "COMBINE", "KIND_KEYS", "PACKAGED_TEACHERS", "STORE_FORMAT", "Teacher", "TeacherStore",
           "build_teacher", "check_kind_keys", "ensure_teacher", "freeze", "load_network", "load_teacher",
           "member_configs", "packaged_teacher", "recipe_of", "resolve_checkpoint", "teacher_key", "weights_sha256"]
