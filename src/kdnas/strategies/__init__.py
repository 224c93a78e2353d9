"""Search strategies behind one ask/tell protocol (:class:`Strategy`), created from ``strategy:`` configs."""

from kdnas.strategies.base import STRATEGIES, Strategy, create_strategy, list_strategies, register_strategy, reward_key

__all__ = ["STRATEGIES", "Strategy", "create_strategy", "list_strategies", "register_strategy", "reward_key"]
