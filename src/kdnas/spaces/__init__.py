"""Search spaces: architectures as JSON, networks built from them, their costs and constraints."""

from kdnas.spaces.base import (
    SPACES,
    Arch,
    Decision,
    SearchSpace,
    build_candidate,
    create_space,
    list_spaces,
    load_arch,
    register_space,
    space_for,
    space_from_config,
)

__all__ = ["SPACES", "Arch", "Decision", "SearchSpace", "build_candidate", "create_space", "list_spaces", "load_arch",
           "register_space", "space_for", "space_from_config"]
